"""The Trainer's checkpoint side: what a checkpoint holds besides the weights, saving and restoring it.

Kept apart from ``trainer.py`` so that the training loop stays short; :class:`~deepseek.train.trainer.Trainer`
is the only class that mixes this in, and it provides every attribute used here.
"""

from __future__ import annotations

import io
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from deepseek.train import rng
from deepseek.train.checkpoint import (
    META_FILE,
    CheckpointError,
    CheckpointManager,
    CheckpointMismatchError,
    load_checkpoint,
)
from deepseek.train.run_lock import lock_run_dir, unlock_run_dir
from deepseek.train.strategy import ModelState, OptimizerState, gathers_state


class TrainerState:
    """``state_dict`` / ``load_state_dict`` / ``save_checkpoint`` of a Trainer (exact resume)."""

    _PROGRESS = ("global_step", "epoch", "batch_in_epoch", "should_stop", "stop_reason")

    def _stateful(self) -> dict[str, Any]:
        """The parts whose ``state_dict()`` a checkpoint holds (None where a part is unused); the model's
        and optimizer's state come through the strategy (a sharded model's is not its modules' own)."""
        return {
            "optimizer": OptimizerState(self.strategy, self.model, self.optimizer),
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
        weights: Any = ModelState(self.strategy, self.model)
        if gathers_state(self.strategy):  # collectives: every rank gathers, in this order; the main rank writes
            weights = weights.snapshot()
        state = self.state_dict()
        if not self.dist.is_main:
            self._last_ckpt_step, self._t_ckpt = self.global_step, time.monotonic()
            return None
        if self.callbacks.on_save_checkpoint:  # callbacks may add entries of their own
            own = set(state)
            self.callbacks("on_save_checkpoint", self, state)
            _check_loadable({k: v for k, v in state.items() if k not in own})
        path = self.ckpt.save(self.global_step, weights, state, best=record)  # type: ignore[arg-type]
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

    def _lock_run_dir(self) -> None:
        """On the main rank, take the run directory's lock (RunDirLockedError while another process writes it)."""
        if self.run_dir is not None and self.dist.is_main:
            lock_run_dir(self.run_dir)
            self._locked_run_dir = self.run_dir

    def _unlock_run_dir(self) -> None:
        if (locked := self.__dict__.pop("_locked_run_dir", None)) is not None:
            unlock_run_dir(locked)

    def _restore(self, resume: str | Path) -> Path | None:
        """Load the checkpoint ``resume`` names: 'auto' (this run's newest that loads; None when there is
        none), a checkpoint directory, or a run or checkpoints directory (its newest that loads). A
        damaged checkpoint is skipped with a warning, in favour of the next older one."""
        if str(resume) == "auto":
            if self.ckpt is None:
                raise ValueError("resume='auto' needs a run_dir")
            candidates = self.ckpt.newest_first()
        elif (Path(resume) / META_FILE).is_file():  # one checkpoint, named by the user: that one or an error
            path = Path(resume)
            self._load_checkpoint(path)
            return path
        else:
            candidates = CheckpointManager(Path(resume) / "checkpoints").newest_first()
            candidates = candidates or CheckpointManager(resume).newest_first()
        for path in candidates:
            try:
                self._load_checkpoint(path)
                return path
            except CheckpointMismatchError:  # not damage: an older checkpoint of this run would not fit either
                raise
            except CheckpointError as exc:
                warnings.warn(f"skipping checkpoint {path}: {exc}", stacklevel=3)
        if str(resume) != "auto":
            raise CheckpointError(f"no valid checkpoint at '{resume}'")
        return None

    def _load_checkpoint(self, path: Path) -> None:
        """Weights and state of one checkpoint; the state is checked whole before any of it is applied."""
        state = load_checkpoint(path, ModelState(self.strategy, self.model))  # type: ignore[arg-type]
        needed = (*self._PROGRESS, "best", "last_val_metrics", "wall_s", "rng")
        if missing := [k for k in needed if k not in state]:
            raise CheckpointError(f"state.pt lacks {', '.join(missing)}")
        self.load_state_dict(state)
        self.callbacks("on_load_checkpoint", self, state)  # what on_save_checkpoint added, back


def _check_loadable(added: dict[str, Any]) -> None:
    """Refuse, when it is saved, an entry a callback added that resuming could not read back: ``state.pt`` is
    loaded with ``weights_only=True`` (tensors, numbers, strings, lists, tuples and dicts of them)."""
    for key, value in added.items():
        buffer = io.BytesIO()
        try:
            torch.save(value, buffer)
            buffer.seek(0)
            torch.load(buffer, weights_only=True)
        except Exception as exc:
            raise TypeError(
                f"on_save_checkpoint added {key!r} of type {type(value).__name__}, which a resume cannot load "
                f"(state.pt is read with torch.load(weights_only=True)): store tensors, numbers, strings, "
                f"lists and dicts of them; {str(exc).splitlines()[0]}"
            ) from None
