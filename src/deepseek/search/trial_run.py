"""One trial of a study: the base config with the sampled values trained by the real Trainer, in-process.

``run_trial`` builds the trial's run (``deepseek.train.build.build_run``, as ``deepseek train`` does) in the
trial's own run directory, inside :func:`deepseek.train.isolation.isolated_run` so that one trial's seeds,
flags, environment and imported user modules do not leak into the next. A duck-typed Trainer callback,
:class:`TrialReporter`, reports the monitored validation metric after every validation as Optuna's
intermediate value (``trial.report(value, step)``, ``step`` = the validation's number, 1, 2, ...: comparable
between trials whose batch size differs) and, when the pruner says so, stops the run at that step.

Under DDP (a process group of several ranks, :func:`search_process_group`) every rank trains the same trial;
only rank 0 holds the Optuna trial, asks the pruner and broadcasts its decision, so that all ranks stop at the
same validation.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.distributed as dist

from deepseek.errors import ConfigError


class TrialFailed(Exception):
    """A trial that could not produce a value (its config is refused, the loss became nan/inf, out of memory):
    recorded as a FAIL with the reason in its user attr ``error``; the study goes on."""


@dataclass
class TrialOutcome:
    """``value``: the best validation value of the monitored metric (None when there was no validation);
    ``pruned``: stopped by the pruner at validation ``validations``."""

    value: float | None
    pruned: bool
    validations: int


class TrialReporter:
    """Trainer callback: ``on_validation_end`` reports ``metrics[metric]`` to ``trial`` (rank 0; None on the
    other ranks) and stops the run when the pruner says so; ``sync`` broadcasts rank 0's decision to all ranks."""

    def __init__(self, trial: optuna.Trial | None, metric: str, mode: str, sync: bool = False) -> None:
        self.trial, self.metric, self.mode, self.sync = trial, metric, mode, sync
        self.best: float | None = None
        self.validations = 0
        self.pruned = False

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.metric not in metrics:  # every rank sees the same metrics: all raise together
            raise ConfigError([f"--metric {self.metric}: not a validation metric of this config; allowed: "
                               f"{', '.join(sorted(metrics))}"])  # fmt: skip
        value = float(metrics[self.metric])
        self.validations += 1
        if not math.isnan(value) and (self.best is None or (value > self.best if self.mode == "max" else
                                                            value < self.best)):  # fmt: skip
            self.best = value
        prune = False
        if self.trial is not None:
            self.trial.report(value, self.validations)
            prune = self.trial.should_prune()
        if self.sync:
            prune = broadcast_from_rank0(prune)
        if prune:
            self.pruned = True
            trainer.should_stop = True
            trainer.stop_reason = f"pruned by the search at validation {self.validations}"


@contextmanager
def search_process_group() -> Iterator[None]:
    """Inside: the default process group of a launched search (torchrun's environment), created here unless
    one exists (then it is the caller's and stays). Left after a barrier (gloo ranks that leave at different
    times can abort), or at once on an error (a peer that failed never arrives).

    Created with ``torch.distributed.init_process_group`` directly, not deepseek.train's ``init_distributed``:
    a group that function creates is torn down by ``Trainer.fit`` when a run ends, and this one must outlive
    every trial (the Trainer joins a group it did not create and leaves it alone)."""
    if dist.is_initialized():
        yield
        return
    from deepseek.train.distributed import adopt_launcher_env, local_rank_from_env

    adopt_launcher_env()  # ranks from mpirun / srun: RANK, WORLD_SIZE, LOCAL_RANK as torchrun names them
    backend = os.environ.get("DS_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    bind: dict[str, Any] = {}
    if backend == "nccl":
        device = torch.device("cuda", local_rank_from_env())
        torch.cuda.set_device(device)
        bind["device_id"] = device
    dist.init_process_group(backend=backend, init_method="env://", **bind)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()
    gc.collect()  # what still references the group (a trial's DDP wrapper in a cycle) goes before the group
    dist.destroy_process_group()


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank of the default process group (pickled; the group's own device for NCCL)."""
    box = [obj]
    device = None
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


def run_trial(
    config: str | Path,
    overrides: Sequence[str],
    run_dir: Path,
    *,
    trial: optuna.Trial | None,
    metric: str,
    mode: str,
    sync: bool = False,
) -> TrialOutcome:
    """Train ``config`` with ``overrides`` (the study's, then the sampled values) in ``run_dir``; raise
    :class:`TrialFailed` for a trial the study should record as failed and go on."""
    from deepseek.config import load_config
    from deepseek.train.build import build_run
    from deepseek.train.callbacks import CallbackList
    from deepseek.train.isolation import isolated_run
    from deepseek.train.step import NonFiniteLossError

    with isolated_run():
        try:
            cfg = load_config(config, list(overrides))
        except ConfigError as exc:  # a combination of values the config refuses (checked bounds each passed)
            raise TrialFailed(f"config refused: {exc.problems[0]}") from exc
        try:
            run = build_run(cfg, run_dir, progress="off")
        except torch.OutOfMemoryError as exc:
            raise TrialFailed(f"out of memory building the run: {str(exc).splitlines()[0]}") from exc
        if run.val_loader is None:
            raise ConfigError([f"data: dataset '{cfg.data.name}' has no validation split (data.val_fraction is 0?); "
                               "a search needs validation results"])  # fmt: skip
        reporter = TrialReporter(trial, metric, mode, sync)
        trainer = run.trainer
        trainer.callbacks = CallbackList([*trainer.callbacks.callbacks, reporter])  # before fit() binds its hooks
        try:
            trainer.fit(run.train_loader, run.val_loader)
        except NonFiniteLossError as exc:
            raise TrialFailed(str(exc)) from exc
        except torch.OutOfMemoryError as exc:
            raise TrialFailed(f"out of memory: {str(exc).splitlines()[0]}") from exc
        finally:
            del run, trainer
    return TrialOutcome(reporter.best, reporter.pruned, reporter.validations)
