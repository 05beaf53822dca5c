"""The Trainer's checkpoint side: what a checkpoint holds besides the weights, saving and restoring it.

Kept apart from ``trainer.py`` so that the training loop stays short; :class:`~deepseek.train.trainer.Trainer`
is the only class that mixes this in, and it provides every attribute used here.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from deepseek.runs import is_sharded
from deepseek.train import rng
from deepseek.train.checkpoint import (
    FINAL_WEIGHTS,
    META_FILE,
    SUMMARY_FILE,
    CheckpointError,
    CheckpointManager,
    CheckpointMismatchError,
    load_checkpoint,
    save_weights_atomic,
    write_json_atomic,
)
from deepseek.train.report import run_summary
from deepseek.train.run_lock import lock_run_dir, unlock_run_dir
from deepseek.train.sharded_checkpoint import (
    PendingSave,
    finish_sharded_save,
    layout,
    load_sharded,
    rank_rng_states,
    start_sharded_save,
    uses_sharded_checkpoints,
)
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

    def state_dict(self, optimizer: bool = True) -> dict[str, Any]:
        """Everything but the weights that exact resume needs; loadable with ``weights_only=True``.
        ``optimizer=False`` leaves the optimizer's state and the EMA average out (a sharded checkpoint holds
        them in its shards; the EMA entry keeps only ``n_averaged``)."""
        stateful = self._stateful()
        if not optimizer:
            stateful["optimizer"] = None
            if self.ema is not None:
                stateful["ema"] = _Counted(self.ema.n_averaged)
        return {
            **{k: getattr(self, k) for k in self._PROGRESS},
            **{k: part.state_dict() if part is not None else None for k, part in stateful.items()},
            "world_size": self.dist.world_size,  # a resume at another world size cannot keep the data position
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
        if getattr(self, "_sharded_checkpoints", False):
            return self._save_sharded(record)
        weights: Any = ModelState(self.strategy, self.model)
        if gathers_state(self.strategy):  # collectives: every rank gathers, in this order; the main rank writes
            weights = weights.snapshot()
        state = self.state_dict()
        if hasattr(self.strategy, "comm_state_dict") and (comm := self.strategy.comm_state_dict()) is not None:
            state["comm_ranks"] = comm  # a collective: each rank's compression state
            state["rng_ranks"] = rank_rng_states(state)  # every rank is here: each one's RNG too
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

    def _resolve_sharded_checkpoints(self) -> None:
        """Decide, once the strategy is built, whether this fit's checkpoints are sharded (ValueError when
        ``sharded_checkpoint=True`` cannot be honoured)."""
        setting = getattr(self, "sharded_checkpoint", "auto")
        self._sharded_checkpoints = uses_sharded_checkpoints(setting, self.strategy, self.dist)
        self._pending_save: PendingSave | None = None
        self._async_group: Any = None  # the asynchronous saves' own gloo group, made at the first one
        if getattr(self, "async_checkpoint", False) and not self._sharded_checkpoints:
            raise ValueError("checkpoint.async_save: true needs sharded checkpoints (checkpoint.sharded: true, "
                             "or auto under fsdp zero_stage 2 or 3)")  # fmt: skip

    def _save_sharded(self, record: dict[str, Any] | None) -> Path | None:
        """Every rank writes its shards; the main rank then writes state.pt and meta.json and renames."""
        state = self.state_dict(optimizer=False)
        state["rng_ranks"] = rank_rng_states(state)  # a collective; each rank's own RNG, for a same-size resume
        if self.dist.is_main and self.callbacks.on_save_checkpoint:
            own = set(state)
            self.callbacks("on_save_checkpoint", self, state)
            _check_loadable({k: v for k, v in state.items() if k not in own})
        assert self.ckpt is not None
        self.finish_pending_checkpoint()  # one save in flight at a time: the previous one is sealed first
        asynchronous = bool(getattr(self, "async_checkpoint", False))
        if asynchronous and self._async_group is None and torch.distributed.is_initialized():
            self._async_group = torch.distributed.new_group(backend="gloo")  # every rank, at the same save
        pending = start_sharded_save(self.ckpt, self.global_step, self.model, self.optimizer, state,
                                     layout(self.strategy, self.dist), self.dist, asynchronous, self._async_group,
                                     self._sharded_parts())  # fmt: skip
        self._last_ckpt_step, self._t_ckpt = self.global_step, time.monotonic()
        if pending is None:  # saved already
            return None
        self._pending_save, self._pending_best = pending, record
        return None if asynchronous else self.finish_pending_checkpoint()

    def _sharded_parts(self) -> dict[str, dict[str, torch.Tensor]] | None:
        """What a sharded checkpoint writes as shards besides the model and optimizer: the EMA average."""
        return {"ema": self.ema.sharded_state()} if self.ema is not None else None

    def finish_pending_checkpoint(self) -> Path | None:
        """Seal the sharded save in flight, once its shards are written (every rank calls this; a no-op when
        none is): the next save and the end of fit() call it. Returns the checkpoint on the main rank."""
        pending, self._pending_save = getattr(self, "_pending_save", None), None
        if pending is None or self.ckpt is None:
            return None
        path = finish_sharded_save(self.ckpt, pending, self.dist)
        if path is None:
            return None
        if self._pending_best is not None:
            self.ckpt.mark_best(pending.step, self._pending_best)
        self.ckpt.prune()
        self.callbacks("on_checkpoint", self, path)
        return path

    def _save_last_and_final(self, improved: bool) -> dict[str, Any]:
        """At the end of fit(): the last checkpoint (an asynchronous one sealed), then ``final/model.safetensors``
        (the average, when EMA is on) and ``summary.json``; returns the summary. Under a gathering strategy
        every rank takes part in gathering what the main rank writes."""
        gathers = gathers_state(self.strategy)
        if (self.dist.is_main or gathers) and self.ckpt is not None:
            self.save_checkpoint(best=improved)
            self.finish_pending_checkpoint()
        summary = run_summary(self)
        if (self.dist.is_main or gathers) and self.run_dir is not None:
            final = (self.ema or ModelState(self.strategy, self.model)).snapshot()
        if self.dist.is_main and self.run_dir is not None:
            (self.run_dir / "final").mkdir(parents=True, exist_ok=True)
            save_weights_atomic(final, self.run_dir / FINAL_WEIGHTS)  # type: ignore[arg-type]
            write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary

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
        saved_world, world = state.get("world_size", self.dist.world_size), self.dist.world_size
        ranks = state.get("rng_ranks")
        rng.set_rng_state(ranks[self.dist.rank] if ranks and len(ranks) == world else state["rng"])
        if hasattr(self.strategy, "load_comm_state_dict"):
            self.strategy.load_comm_state_dict(state.get("comm_ranks"), self.dist)
        streaming = isinstance(self._data_state, dict) and self._data_state.get("format") == "streaming"
        # A streaming loader's order is global (rank-independent): its saved position resumes at any world size.
        if saved_world != world and not streaming:  # each rank's share of the epoch changes: the position is lost
            warnings.warn(
                f"resuming a checkpoint written at world size {saved_world} at world size {world}: the data "
                f"position does not carry over, epoch {self.epoch} restarts from its first batch", stacklevel=2
            )  # fmt: skip
            self.batch_in_epoch, self._data_state = 0, None

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
        if is_sharded(path):
            state = load_sharded(path, self.model, self.optimizer, self._sharded_parts())
        else:
            try:
                state = load_checkpoint(path, ModelState(self.strategy, self.model))  # type: ignore[arg-type]
            except CheckpointMismatchError:
                _refuse_an_older_layout(path, self.model)
                raise
        needed = (*self._PROGRESS, "best", "last_val_metrics", "wall_s", "rng")
        if missing := [k for k in needed if k not in state]:
            raise CheckpointError(f"state.pt lacks {', '.join(missing)}")
        self.load_state_dict(state)
        self.callbacks("on_load_checkpoint", self, state)  # what on_save_checkpoint added, back


class _Counted:
    """The EMA entry of a sharded checkpoint's state.pt: the average is in the shards (``in_shards``)."""

    def __init__(self, n_averaged: int) -> None:
        self.n_averaged = n_averaged

    def state_dict(self) -> dict[str, Any]:
        return {"n_averaged": torch.tensor(self.n_averaged), "in_shards": True}


def _refuse_an_older_layout(path: Path, model: torch.nn.Module) -> None:
    """When a checkpoint's weights do not fit ``model`` by name but the model's own load hooks convert them (an
    older layout of the same model, e.g. gpt2's attention before q, k and v were split), say that plainly: the
    weights load, but the optimizer state, stored per parameter of the old layout, cannot be resumed."""
    from deepseek.runs import MODEL_FILE, load_weights

    try:
        trial = copy.deepcopy(model)  # only on this error path; loading must not touch the model
        load_weights(trial, path / MODEL_FILE)  # strict, tied weights stored once, the model's load hooks run
    except Exception:  # a different model: the mismatch error stands as it is
        return
    raise CheckpointMismatchError(
        f"{path} was written with an older layout of this model: its weights load (deepseek eval, serving, "
        f"deepseek.runs.load_trained_weights), but its optimizer state does not fit the new layout, so it "
        f"cannot be resumed; start a new run from its weights (model.pretrained: {path / MODEL_FILE}), or resume it with "
        f"the release that wrote it"
    )


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
