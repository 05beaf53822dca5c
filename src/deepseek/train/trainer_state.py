"""The Trainer's checkpoint side: what a checkpoint holds besides the weights, saving and restoring it.

Kept apart from ``trainer.py`` so that the training loop stays short; :class:`~deepseek.train.trainer.Trainer`
is the only class that mixes this in, and it provides every attribute used here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from deepseek.train import rng
from deepseek.train.checkpoint import load_checkpoint, resolve_checkpoint


class TrainerState:
    """``state_dict`` / ``load_state_dict`` / ``save_checkpoint`` of a Trainer (exact resume)."""

    _PROGRESS = ("global_step", "epoch", "batch_in_epoch", "should_stop", "stop_reason")

    def _stateful(self) -> dict[str, Any]:
        """The parts whose ``state_dict()`` a checkpoint holds (None where a part is unused)."""
        return {
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.policy.scaler,
            "precision": self.policy if hasattr(self.policy, "state_dict") else None,  # progressive
            "ema": self.ema,
            "callbacks": self.callbacks,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights that exact resume needs; loadable with ``weights_only=True``."""
        return {
            **{k: getattr(self, k) for k in self._PROGRESS},
            **{k: part.state_dict() if part is not None else None for k, part in self._stateful().items()},
            "wall_s": self._wall_before + time.monotonic() - self._t_start,
            "rng": rng.rng_state(),
            "best": {**self.best.state_dict(), "checkpoint": self.best_checkpoint},
            "last_val_metrics": self.last_val_metrics,
            "data": self._train_data.state_dict() if hasattr(self._train_data, "state_dict") else None,
        }

    def save_checkpoint(self, best: bool = False) -> Path | None:
        if self.ckpt is None or self._last_ckpt_step == self.global_step:
            return None
        record = {"monitor": self.best.monitor, "value": self.best.best, "step": self.global_step} if best else None
        if best:
            self.best_checkpoint = f"step-{self.global_step:08d}"
        path = self.ckpt.save(self.global_step, self.model, self.state_dict(), best=record)
        self._last_ckpt_step, self._t_ckpt = self.global_step, time.monotonic()
        self.callbacks("on_checkpoint", self, path)
        return path

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (the weights are loaded separately)."""
        for k, part in self._stateful().items():
            if part is not None and state.get(k) is not None:
                part.load_state_dict(state[k])
        for k in self._PROGRESS:
            setattr(self, k, state[k])
        self.best.load_state_dict(state["best"])
        self.best_checkpoint = state["best"].get("checkpoint")
        self.last_val_metrics = dict(state["last_val_metrics"])
        self._wall_before = float(state["wall_s"])
        self._data_state = state.get("data")
        rng.set_rng_state(state["rng"])

    def _restore(self, resume: str | Path) -> Path | None:
        if str(resume) == "auto":
            if self.ckpt is None:
                raise ValueError("resume='auto' needs a run_dir")
            path = self.ckpt.latest_valid()
            if path is None:
                return None
        else:
            path = resolve_checkpoint(resume)
        self.load_state_dict(load_checkpoint(path, self.model))
        return path
