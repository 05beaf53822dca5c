"""``ds.Trainer``: trains any ``nn.Module`` on any iterable of batches, on one process or under torchrun.

Design notes (what users of other trainers complain about, and what this one does instead):
- Gradient accumulation is exact, and gradients sync on the last micro-step only (see ``step.py``).
- How the model is distributed (one process, DDP, a user's own) is a strategy (``strategy.py``).
- No hidden per-step cost: on GPUs losses stay on the device until a logging step (no per-step
  sync), hooks no callback implements cost nothing, fp32 runs without an autocast context; see
  ``benchmarks/trainer_overhead.py``.
- Exact resume: a checkpoint holds the weights, optimizer, scheduler, scaler, EMA, callback and
  RNG states and the position in the epoch; a resumed run matches an uninterrupted one bitwise.
- Precision and compilation: ``precision`` is auto, fp32, bf16-mixed, fp16-mixed or progressive
  (``precision.py``); ``compile`` is False, True or "auto" (``ds.jit``; auto keeps compiled only
  where it measured faster). A ``deepseek.optim.MixedPrecision`` optimizer is bound to the model here.

The default step expects ``(inputs, targets)`` batches. Otherwise pass
``step_fn(model, batch) -> loss | (loss, outputs, targets)``.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deepseek.amp.policy import PrecisionPolicy
from deepseek.jit_compile import JitFunction, jit, unjit
from deepseek.registry import metrics as metric_registry
from deepseek.train.batching import windows
from deepseek.train.callbacks import CallbackList, EarlyStopping, Monitor
from deepseek.train.checkpoint import (
    CheckpointManager,
    claim_run_dir,
)
from deepseek.train.distributed import (
    DistInfo,
    all_reduce_sum,
    init_distributed,
    leaving_own_process_group,
    resolve_device,
)
from deepseek.train.ema import ExponentialMovingAverage
from deepseek.train.logger import RunLogger
from deepseek.train.meta_init import is_on_meta
from deepseek.train.report import log_precision_events, step_values
from deepseek.train.sharded_checkpoint import check_sharded_setting
from deepseek.train.step import ON_NONFINITE, OptimizerStep
from deepseek.train.strategy import build_strategy, gathers_state, optimizer_and_scheduler
from deepseek.train.trainer_state import TrainerState
from deepseek.train.trainer_validation import TrainerValidation

StepFn = Callable[[nn.Module, Any], Any]


class Trainer(TrainerState, TrainerValidation):
    """Fit a model. See the module docstring; arguments mirror the config's ``train``, ``checkpoint``
    and ``logging`` sections. ``scheduler`` is an LR scheduler or ``f(optimizer, total_steps)``,
    stepped once per optimizer step. ``run_dir=None`` writes nothing to disk."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        scheduler: Any = None,
        step_fn: StepFn | None = None,
        max_epochs: int | None = 10,
        max_steps: int | None = None,
        precision: str = "auto",
        compile: bool | str = False,
        accumulate_grad_batches: int = 1,
        grad_clip_norm: float | None = None,
        ema_decay: float | None = None,
        val_every_steps: int | None = None,
        val_every_epochs: int | None = 1,
        early_stopping: EarlyStopping | dict[str, Any] | None = None,
        metrics: Sequence[Any] = ("accuracy",),
        callbacks: Sequence[Any] = (),
        device: str | torch.device = "auto",
        run_dir: str | Path | None = None,
        checkpoint_every_steps: int | None = None,
        checkpoint_every_minutes: float | None = 30.0,
        keep_last: int = 3,
        sharded_checkpoint: bool | str = "auto",  # auto: sharded (DCP) under fsdp ZeRO-2/3; see sharded_checkpoint.py
        async_checkpoint: bool = False,  # sharded checkpoints written while training goes on (dcp.async_save)
        monitor: str = "val/loss",
        mode: str = "min",
        save_best: bool = True,
        log_every_steps: int = 50,
        tensorboard: bool = True,
        sinks: Sequence[Any] | None = None,  # log sinks (deepseek.train.sinks); None: jsonl, tensorboard, console
        progress: str = "auto",
        on_nonfinite: str = "stop",
        strategy: Any = "auto",
    ) -> None:
        if max_epochs is None and max_steps is None:
            raise ValueError("set max_epochs or max_steps")
        if on_nonfinite not in ON_NONFINITE:  # a nan/inf loss: stop (raise), skip the step, or ignore it
            raise ValueError(f"on_nonfinite: {on_nonfinite!r} is not allowed; use one of {', '.join(ON_NONFINITE)}")
        self.on_nonfinite, self.nonfinite_steps = on_nonfinite, 0
        self.model = model
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-3)
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self._scheduler_arg, self.scheduler = scheduler, None
        self.step_fn = step_fn
        self.max_epochs, self.max_steps = max_epochs, max_steps
        self.accumulate_grad_batches = accumulate_grad_batches
        self.grad_clip_norm, self.ema_decay = grad_clip_norm, ema_decay
        self.val_every_steps, self.val_every_epochs = val_every_steps, val_every_epochs
        self.metrics = [metric_registry.build(m) if isinstance(m, str) else m for m in metrics]
        for m in self.metrics:  # metrics are logged as val/<name>
            if not hasattr(m, "name"):
                m.name = type(m).__name__.lower()
        cbs = list(callbacks)
        if isinstance(early_stopping, dict):
            early_stopping = EarlyStopping(**early_stopping)
        if early_stopping is not None:
            cbs.append(early_stopping)
        self.callbacks = CallbackList(cbs)
        self.device = resolve_device(device)
        # A name, {name, **kwargs}, or a strategy object; "auto" is decided by fit() once the world is known.
        self.strategy_arg, self.strategy = strategy, None
        self.precision_arg = precision
        if compile not in (True, False, "auto"):
            raise ValueError(f"compile must be true, false or 'auto'; got {compile!r}")
        self.compile = compile
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.ckpt_every_steps, self.ckpt_every_minutes = checkpoint_every_steps, checkpoint_every_minutes
        self.keep_last, self.save_best = keep_last, save_best
        self.sharded_checkpoint, self.async_checkpoint = check_sharded_setting(sharded_checkpoint), async_checkpoint
        self.best = Monitor(monitor, mode)
        self.log_every_steps, self.tensorboard, self.progress = log_every_steps, tensorboard, progress
        self.sinks = sinks
        # Progress state (saved in checkpoints).
        self.global_step = self.epoch = self.batch_in_epoch = 0
        self.should_stop, self.stop_reason = False, ""
        self.last_val_metrics: dict[str, float] = {}
        self.best_checkpoint: str | None = None

    # ----------------------------------------------------------------------------------- set-up
    def _setup(self, train_data: Iterable[Any], resume: str | Path | None) -> None:
        self.dist: DistInfo = init_distributed(self.device)  # self.device is already this rank's (LOCAL_RANK)
        self.strategy = build_strategy(self.strategy_arg, self.dist)
        self._resolve_sharded_checkpoints()  # sharded checkpoints or not: known (and checked) before training
        self._lock_run_dir()  # one writer per run directory (the main rank); fit() gives it back
        if self.run_dir is not None and (self._overwrite or getattr(self, "_claimed_run_dir", None) != self.run_dir):
            # Before anything touches the model. A second run here would mix with the first; a second
            # fit() of this Trainer continues its own (unless it asks to overwrite).
            claim_run_dir(self.run_dir, resume=resume is not None, overwrite=self._overwrite, is_main=self.dist.is_main)
            self._claimed_run_dir = self.run_dir
        if not is_on_meta(self.model):  # a model built on the meta device gets its memory from the strategy
            self.model.to(self.device)
        if getattr(self.optimizer, "bound", True) is False:  # deepseek.optim.MixedPrecision built without a model
            self.optimizer.bind(self.model)
        if getattr(self, "policy", None) is None:  # kept across fit() calls (progressive precision's hooks)
            self.policy = PrecisionPolicy.create(self.precision_arg, self.device, self.model)
        if hasattr(self.policy, "process_group"):  # progressive: the ranks decide promotions together
            self.policy.process_group = torch.distributed.group.WORLD if self.dist.enabled else None
        self._on_cpu = self.device.type == "cpu"
        self._jitted = bool(self.compile) and not isinstance(self.model.__dict__.get("forward"), JitFunction)
        if self._jitted:  # autotune keeps eager where compiling does not pay
            jit(self.model, autotune=self.compile == "auto")
        self.total_steps = self._total_steps(train_data)
        # Set up first, then load: a sharding strategy wraps the model before it takes its sharded state; it
        # may re-point the optimizer at sharded parameters or wrap it, and the scheduler is built on that one.
        self.train_model: nn.Module = self.strategy.setup(self.model, self.dist, self.device)
        self._strategy_set_up = True  # teardown() once, also when what follows fails
        # After set-up: the average is shaped and sharded like the parameters the model trains (ema.py).
        self.ema = ExponentialMovingAverage(self.model, self.ema_decay, self.strategy) if self.ema_decay is not None else None
        self.optimizer, self.scheduler = optimizer_and_scheduler(
            self.strategy, self.optimizer, self.model, self._scheduler_arg, self.total_steps
        )
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", self.keep_last) if self.run_dir else None
        self._wall_before = 0.0
        resumed_from = self._restore(resume) if resume is not None else None
        self._step = OptimizerStep(
            self.model, self.train_model, self.optimizer,
            loss_fn=self.loss_fn, step_fn=self.step_fn, policy=self.policy, dist=self.dist, device=self.device,
            grad_clip_norm=self.grad_clip_norm, scheduler=self.scheduler, ema=self.ema, on_nonfinite=self.on_nonfinite,
            strategy=self.strategy, before_optimizer_step=self.callbacks.bind("on_before_optimizer_step", self),
        )  # fmt: skip
        self.logger = None
        if self.dist.is_main:
            if self.run_dir is not None:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            self.logger = RunLogger(
                self.run_dir,
                total_steps=self.total_steps,
                progress=self.progress,
                tensorboard=self.tensorboard,
                sinks=self.sinks,
                resume_step=self.global_step if resumed_from else None,
            )
            if resumed_from:
                self.logger.message(f"resumed from {resumed_from} at step {self.global_step}, epoch {self.epoch}")

    def _total_steps(self, train_data: Iterable[Any]) -> int | None:
        try:
            per_epoch = math.ceil(len(train_data) / self.accumulate_grad_batches)  # type: ignore[arg-type]
        except TypeError:
            return self.max_steps
        from_epochs = per_epoch * self.max_epochs if self.max_epochs is not None else None
        candidates = [s for s in (self.max_steps, from_epochs) if s is not None]
        return min(candidates) if candidates else None

    # ------------------------------------------------------------------------------------- fit
    @classmethod
    def from_config(cls, config: Any, overrides: list[str] | None = None, run_dir: str | Path | None = None) -> Trainer:
        """A Trainer built from a YAML path or :class:`~deepseek.config.Config`; ``fit()`` then needs no data.

        A subclass's ``from_config`` builds the subclass. The builders (:mod:`deepseek.train.assemble`) return
        the Trainer's arguments and never import the Trainer, so this import makes no cycle."""
        from deepseek.config import Config, load_config
        from deepseek.train.assemble import assemble

        cfg = config if isinstance(config, Config) else load_config(config, overrides or [])
        return assemble(cfg, run_dir).make_trainer(cls)

    def fit(
        self,
        train_data: Iterable[Any] | None = None,
        val_data: Iterable[Any] | None = None,
        *,
        resume: str | Path | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Train and return the run summary.

        ``resume='auto'`` continues from the newest valid checkpoint in ``run_dir`` (fresh start when
        there is none); a path resumes from that checkpoint (or the newest in that directory). A
        ``run_dir`` that holds an earlier run's checkpoints needs ``resume``, or ``overwrite=True``,
        which deletes that run's checkpoints, logs, summary and final weights first; otherwise this
        raises ``deepseek.train.checkpoint.RunDirInUseError`` (a FileExistsError).

        Under torchrun, fit() joins the default process group, creating it from the environment
        when there is none; a group it (or ``Trainer.from_config``) created, it also tears down
        when it returns, after a barrier, or at once when it raises. A group you created with
        ``torch.distributed.init_process_group`` stays yours: create one to keep it after fit(),
        e.g. to ``validate()`` across ranks afterwards.
        """
        if overwrite and resume is not None:
            raise ValueError(f"fit(): overwrite=True starts the run over, resume={resume!r} continues it; pass one")
        self._overwrite = overwrite
        if train_data is None:
            train_data = getattr(self, "train_data", None)
            val_data = val_data if val_data is not None else getattr(self, "val_data", None)
            if train_data is None:
                raise ValueError("fit() needs train_data (only a Trainer built from a config has its own)")
        self._train_data = train_data
        with leaving_own_process_group():
            try:
                return self._run(train_data, val_data, resume)
            except BaseException as exc:
                for hook in self.callbacks.on_exception:  # then the exception propagates unchanged
                    hook(self, exc)
                raise
            finally:
                self._teardown_strategy()
                self._unlock_run_dir()

    def _teardown_strategy(self) -> None:
        """Unwrap the model and free the strategy's wrapper while the process group still lives: a wrapper
        in a reference cycle (DDP's) that a later GC frees could otherwise hang a gloo group's destructor."""
        if not self.__dict__.pop("_strategy_set_up", False):
            return
        wrapped = self.train_model
        self.train_model = self.strategy.teardown(wrapped)  # type: ignore[union-attr]
        if (step := self.__dict__.get("_step")) is not None:
            step.train_model = self.train_model
        if wrapped is not self.train_model:
            del wrapped, step
            gc.collect()

    def _run(
        self, train_data: Iterable[Any], val_data: Iterable[Any] | None, resume: str | Path | None
    ) -> dict[str, Any]:
        """fit()'s set-up, loop and finish, inside its process-group scope."""
        self._setup(train_data, resume)
        self._t_start = self._t_log = self._t_ckpt = time.monotonic()
        self._losses: list[Any] = []
        self._samples = self._samples_total = 0
        self._last_val_step = self._last_ckpt_step = -1
        self.callbacks("on_train_start", self)
        if self.logger:
            self.logger.start(self.global_step)
        try:
            self._loop(train_data, val_data)
            return self._finish(val_data)
        finally:
            if self._jitted:  # give the caller back the model as it came
                unjit(self.model)
            if self.logger:
                self.logger.close()

    def _done(self) -> bool:
        """Stopped by a callback (persisted), or out of steps/epochs (derived: a resumed run may extend them)."""
        return (
            self.should_stop
            or (self.max_steps is not None and self.global_step >= self.max_steps)
            or (self.max_epochs is not None and self.epoch >= self.max_epochs)
        )

    def _loop(self, train_data: Iterable[Any], val_data: Iterable[Any] | None) -> None:
        step_start = self.callbacks.on_step_start  # pre-bound: empty unless a callback implements it
        while not self._done():
            batches = self._epoch_batches(train_data)
            self.train_model.train()
            self.callbacks("on_epoch_start", self)
            for window, epoch_end in windows(batches, self.accumulate_grad_batches):
                if step_start:
                    for hook in step_start:
                        hook(self)
                loss, samples = self._step(window)
                if self._step.nonfinite_loss is not None:  # the optimizer did not step: stop (raise), or count it
                    self.nonfinite_steps = self._step.refuse_nonfinite(self.global_step + 1, self.logger)
                self.global_step += 1
                self.batch_in_epoch += len(window)
                self._samples += samples
                if self.logger and self._step.nonfinite_loss is None:
                    self._losses.append(loss)
                self._after_step(val_data, epoch_end)
                if self.should_stop or (self.max_steps is not None and self.global_step >= self.max_steps):
                    return
            self.epoch += 1
            self.batch_in_epoch = 0

    def _epoch_batches(self, train_data: Iterable[Any]) -> Iterable[Any]:
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(self.epoch)
        elif hasattr(getattr(train_data, "sampler", None), "set_epoch"):
            train_data.sampler.set_epoch(self.epoch)  # a DataLoader over a DistributedSampler
        if self.batch_in_epoch and hasattr(train_data, "load_state_dict"):
            saved = getattr(self, "_data_state", None) or {}
            train_data.load_state_dict({**saved, "epoch": self.epoch, "batches": self.batch_in_epoch})
            return train_data
        if self.batch_in_epoch:  # fast-forward a loader that cannot skip by itself
            return islice(train_data, self.batch_in_epoch, None)
        return train_data

    def _after_step(self, val_data: Iterable[Any] | None, epoch_end: bool) -> None:
        step = self.global_step
        if self.logger and step % self.log_every_steps == 0:
            self._log_train()
        improved = False
        epoch_val = epoch_end and self.val_every_epochs and (self.epoch + 1) % self.val_every_epochs == 0
        if val_data is not None and ((self.val_every_steps and step % self.val_every_steps == 0) or epoch_val):
            improved = self._validate_and_track(val_data)
        if self._step.events and self.logger:  # progressive precision promoted/demoted a module
            log_precision_events(self)
        self.callbacks("on_step_end", self)
        if epoch_end:
            self.callbacks("on_epoch_end", self)
        if self.ckpt is not None and (self.dist.is_main or gathers_state(self.strategy)):
            due = (self.ckpt_every_steps and step % self.ckpt_every_steps == 0) or (
                self.ckpt_every_minutes and time.monotonic() - self._t_ckpt >= 60 * self.ckpt_every_minutes
            )
            if self.ckpt_every_minutes and self.dist.enabled and gathers_state(self.strategy):  # rank 0's clock
                flag = torch.tensor([float(bool(due) and self.dist.is_main)])  # decides: all ranks gather together
                due = all_reduce_sum(flag, self.dist).item() > 0
            # The run's last step is saved by _finish after its final validation, so that the checkpoint's
            # own state (best value, last metrics) is the one best.json describes.
            if improved or (due and not self._ends_here(epoch_end)):
                self.save_checkpoint(best=improved)

    def _ends_here(self, epoch_end: bool) -> bool:
        """Whether the loop stops after this step (max_steps, the last epoch's end, or a callback's stop)."""
        last_epoch = epoch_end and self.max_epochs is not None and self.epoch + 1 >= self.max_epochs
        return self.should_stop or last_epoch or (self.max_steps is not None and self.global_step >= self.max_steps)

    def _log_train(self) -> None:
        now = time.monotonic()
        values = step_values(self, now)
        self._losses.clear()
        self._samples_total += self._samples
        self._samples, self._t_log = 0, now
        # After an epoch's last step the counter has moved on; log the epoch the steps belong to.
        epoch = self.epoch - 1 if self.batch_in_epoch == 0 and self.epoch > 0 else self.epoch
        self.logger.log_step(self.global_step, epoch, values)  # type: ignore[union-attr]

    # ---------------------------------------------------------------------------------- finish
    def _finish(self, val_data: Iterable[Any] | None) -> dict[str, Any]:
        if self.logger and self._losses:
            self._log_train()
        improved = False
        if val_data is not None and self._last_val_step != self.global_step and self.global_step > 0:
            improved = self._validate_and_track(val_data)
        summary = self._save_last_and_final(improved)
        self.callbacks("on_train_end", self)
        if self.logger:
            self.logger.summary_table(summary)
        return summary
