"""``train.profile``: profile a window of a real training run from inside the Trainer (a duck-typed callback).

``ProfilerCallback(start_step=10, steps=5, warmup=1)`` records optimizer steps ``start_step + 1`` to
``start_step + steps`` (1-based, as ``trainer.global_step`` counts them after a step); the ``warmup`` steps just
before run under the profiler unrecorded. Each recorded step is split by the Trainer's hooks into
``ds::data_wait`` (the previous ``on_step_end`` to ``on_step_start``: fetching and collating the batch),
``ds::forward`` / ``ds::backward`` (switched by forward hooks on ``trainer.train_model``; several micro-batches
alternate), and ``ds::optimizer`` (``on_before_optimizer_step`` to the end of ``optimizer.step()``, seen by
torch's step post-hook: clipping and the step); what follows until ``on_step_end`` (scheduler, EMA, logging,
validation) is ``other``. Files go to ``output_dir``, else ``<run_dir>/profile``, on the main rank only (the other ranks
are not profiled). In a run of several processes the window is recorded without Python stacks (see ``_start``).

The run's results do not change: the hooks only open and close profiler ranges (and, on CUDA, synchronise inside
the window); FLOPs are counted after the window on a copy of the model, on the last recorded micro-batch, with the
RNG state forked and restored. A run that resumes past ``start_step`` profiles nothing.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deepseek.errors import ConfigError
from deepseek.profiler.flops import FlopCount, count_flops
from deepseek.profiler.metrics import nvtx_wanted, parse_metrics
from deepseek.profiler.report import AttentionTokens, Collector, device_name, write_report
from deepseek.profiler.session import ModuleRanges, StepPhases, make_profiler
from deepseek.profiler.synthetic import surrogate_loss

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")  # fmt: skip


class ProfilerCallback:
    """Profile optimizer steps ``start_step + 1 .. start_step + steps`` of a Trainer run (see the module docstring).

    ``metrics``: names from ``python -m deepseek.profiler --metrics help``. ``print_table``: print the terminal
    table when the window ends. ``model_name``: what summary.json calls the model (default: its class name).
    ``python_stacks``: record Python stacks (the flame graph by stack); None: only in a run of one process.
    After the window, ``summary`` holds the summary.json dict and ``output_path`` the directory."""

    def __init__(self, start_step: int = 10, steps: int = 5, warmup: int = 1, output_dir: str | None = None,
                 metrics: list[str] | tuple[str, ...] = (), print_table: bool = True,
                 model_name: str | None = None, python_stacks: bool | None = None) -> None:  # fmt: skip
        if start_step < 0 or steps < 1 or warmup < 0:
            raise ConfigError([f"train.profile: start_step {start_step} (>= 0), steps {steps} (>= 1) and warmup "
                               f"{warmup} (>= 0) are not all allowed"])  # fmt: skip
        self.start_step, self.steps, self.warmup = start_step, steps, min(warmup, start_step)
        self.first = start_step - self.warmup  # the profiler starts after this many optimizer steps
        self.output_dir, self.print_table, self.model_name = output_dir, print_table, model_name
        self.python_stacks = python_stacks
        try:
            self.metric_names = parse_metrics(list(metrics), option="train.profile.metrics")
        except ValueError as exc:  # a ConfigError: `deepseek train` prints it as one line, exit code 2
            raise ConfigError([str(exc)]) from None
        self.summary: dict[str, Any] | None = None
        self.output_path: Path | None = None
        self._prof: Any = None
        self._armed = False

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Any) -> None:
        self._armed = bool(trainer.dist.is_main) and trainer.global_step <= self.first and self.summary is None
        if not self._armed and trainer.dist.is_main and trainer.global_step < self.start_step + self.steps:
            self._message(trainer, f"profiler: the run resumed at step {trainer.global_step}, past the profiled "
                          f"window's start ({self.first}); nothing is profiled")  # fmt: skip
        if self._armed and trainer.global_step == self.first:
            self._start(trainer)

    def on_step_start(self, trainer: Any) -> None:
        if self._prof is not None:
            self._forwards, self._in_step = 0, True
            self._phases.enter("forward")

    def on_before_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        if self._prof is not None:
            self._phases.enter("optimizer")

    def on_step_end(self, trainer: Any) -> None:
        if self._prof is None:
            if self._armed and trainer.global_step == self.first:
                self._start(trainer)
            return
        self._in_step = False
        self._phases.close()
        self._prof.step()
        self._done += 1
        if self._done == self.warmup:
            self._collector.start()
        total = getattr(trainer, "total_steps", None)
        last = trainer.should_stop or (total is not None and trainer.global_step >= total)
        if self._done == self.warmup + self.steps or last:  # the run's end: before it writes its final files
            self._finish(trainer)
        else:
            self._phases.enter("data_wait")

    def on_save_checkpoint(self, trainer: Any, state: dict[str, Any]) -> None:
        # torch 2.13 cannot read back a profile with Python stacks that recorded a torch.save (the events' names
        # fail to decode), so a checkpoint inside the window ends the window here, with the steps recorded so far
        if self._prof is not None:
            self._message(trainer, "profiler: a checkpoint is saved inside the profiled window; the window ends "
                          "here (torch's stack profiler cannot record torch.save)")  # fmt: skip
            self._finish(trainer)

    def on_train_end(self, trainer: Any) -> None:
        if self._prof is not None:  # the run ended inside the window: report the steps recorded so far
            self._finish(trainer)

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        if self._prof is not None:
            try:
                self._stop()
            except Exception:  # the run's own exception is the one to see
                pass

    # -------------------------------------------------------------------------------------- window
    def _start(self, trainer: Any) -> None:
        self._armed = False
        device = trainer.device
        out = self.output_dir or (Path(trainer.run_dir) / "profile" if trainer.run_dir is not None else None)
        self.output_path = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="deepseek-profile-"))
        self._collector = Collector(self.output_path, device)
        nvtx = nvtx_wanted(self.metric_names, device)
        self._phases = StepPhases(sync=device.type == "cuda", nvtx=nvtx)
        self._captured: tuple[Any, Any] | None = None
        self._forwards = self._max_forwards = self._done = 0
        # Only the step's own forwards count: from on_step_start to the end of optimizer.step(); validation, run
        # after it within the same step, is left out of the phases, the module ranges and the captured batch.
        self._in_step = False
        self._ranges = ModuleRanges(trainer.model, root=trainer.train_model, nvtx=nvtx,
                                    on_root_start=lambda: self._phases.enter("forward"),
                                    on_root_end=lambda: self._phases.enter("backward"),
                                    active=lambda: self._in_step)  # fmt: skip
        self._capture = trainer.train_model.register_forward_pre_hook(self._capture_batch, with_kwargs=True)
        # the optimizer phase ends with optimizer.step() (torch's step post-hook); the scheduler, EMA, logging and
        # validation that follow until on_step_end are "other"
        post_hook = getattr(trainer.optimizer, "register_step_post_hook", None)
        self._step_hook = post_hook(lambda *_: self._optimizer_done()) if callable(post_hook) else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        # By default a run of several processes is profiled without Python stacks: with them a DDP rank died
        # with SIGSEGV once in this project's CI (vllm-project/vllm-ascend#16577 reports the same with with_stack;
        # a gloo rank has also crashed once without the profiler, so the cause is not settled). The module flame
        # graph stays; train.profile.python_stacks: true records them anyway.
        world = trainer.dist.world_size
        with_stack = self.python_stacks if self.python_stacks is not None else world == 1
        if not with_stack:
            why = f"in a run of {world} processes by default" if self.python_stacks is None else "python_stacks: false"
            self._collector.stack_note = f"Python stacks are not recorded ({why}); see the module flame graph"
        self._prof = make_profiler(device, wait=0, warmup=self.warmup, active=self.steps, on_ready=self._collector,
                                   with_stack=with_stack)  # fmt: skip
        self._prof.start()
        if self.warmup == 0:
            self._collector.start()
        self._phases.enter("data_wait")

    def _optimizer_done(self) -> None:
        self._in_step = False
        self._phases.close()

    def _capture_batch(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if not self._in_step:  # validation's forwards
            return
        self._captured = (args, kwargs)  # references only: the FLOP count re-runs this micro-batch on a copy
        self._forwards += 1
        self._max_forwards = max(self._max_forwards, self._forwards)

    def _stop(self) -> None:
        prof, self._prof = self._prof, None
        self._phases.close()
        self._ranges.remove()
        self._capture.remove()
        if self._step_hook is not None:
            self._step_hook.remove()
        prof.stop()  # mid-window (the run ended early) this also hands the recorded steps to the collector

    def _finish(self, trainer: Any) -> None:
        """Stop, read and write the report; a failure here is reported and never stops the training run."""
        try:
            self._report(trainer)
        except Exception as exc:
            if self._prof is not None:
                self._prof = None  # give up on this window; the run goes on unprofiled
            self._message(trainer, f"profiler: no report ({type(exc).__name__}: {exc}); training continues")

    def _report(self, trainer: Any) -> None:
        self._stop()
        if self._collector.profile is None or self._collector.profile.steps == 0:
            self._message(trainer, "profiler: the run ended before a profiled step completed; nothing written")
            return
        count, info, error = self._count_flops(trainer)
        precision = getattr(getattr(trainer, "policy", None), "precision", "fp32")
        meta = {"model": self.model_name or type(trainer.model).__name__, "mode": "train", "device": str(trainer.device),
                "device_name": device_name(trainer.device),
                "precision": str(precision), "batch_size": info.get("batch_size")}  # fmt: skip
        self.summary = write_report(self._collector, meta=meta, model=trainer.model, flop_count=count, flop_info=info,
                                    metric_names=self.metric_names, flop_error=error,
                                    nvtx_ranges=self._phases.nvtx_count + self._ranges.nvtx_count)  # fmt: skip
        if self.print_table:
            from deepseek.profiler.table import print_summary

            print_summary(self.summary)
        self._message(trainer, f"profiler: steps {self.start_step + 1}-{self.start_step + self._collector.profile.steps}"
                      f" profiled; files in {self.output_path}")  # fmt: skip

    # ------------------------------------------------------------------------------------- FLOPs
    def _count_flops(self, trainer: Any) -> tuple[FlopCount | None, dict[str, Any], str | None]:
        """FLOPs of one optimizer step: forward and backward of a copy of the model on the last micro-batch,
        times the micro-batches per step (the optimizer's own FLOPs are not counted)."""
        if self._captured is None:
            return None, {}, "no forward call was seen in the window"
        args, kwargs = self._captured
        info = _token_info(args, kwargs, self._max_forwards)
        try:
            clone = _copy_without_hooks(trainer.model)
            device = trainer.device
            cuda = [device.index or 0] if device.type == "cuda" else []
            autocast = getattr(trainer.policy, "autocast", None)

            def step() -> None:
                with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
                    loss = surrogate_loss(clone(*args, **kwargs))
                loss.backward()

            with torch.random.fork_rng(devices=cuda), AttentionTokens(clone) as seen:  # forked: dropout's draws
                count = count_flops(clone, step)
        except Exception as exc:  # a model that cannot be copied (sharded parameters): time without FLOPs
            return None, info, f"{type(exc).__name__}: {exc}"
        k = max(self._max_forwards, 1)
        if seen.info:  # the tokens attention saw (a ViT's patches), for every micro-batch of the step
            info = {**info, "seq_len": seen.info["seq_len"], "tokens": seen.info["tokens"] * k}
        if k > 1:
            count = FlopCount(count.total * k, {m: v * k for m, v in count.by_module.items()},
                              {o: v * k for o, v in count.by_operator.items()},
                              {m: v * k for m, v in count.self_by_module.items()})  # fmt: skip
        return count, info, None

    @staticmethod
    def _message(trainer: Any, text: str) -> None:
        logger = getattr(trainer, "logger", None)
        if logger is not None:
            logger.message(text)
        else:
            print(text, flush=True)


def _copy_without_hooks(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with no hooks (other callbacks' hooks must not see, or be copied into, the
    FLOP-counting run); the original's hooks are put back exactly as they were."""
    saved = {}
    for m in model.modules():
        saved[m] = {name: getattr(m, name) for name in _HOOK_DICTS if hasattr(m, name)}
        for name, value in saved[m].items():
            setattr(m, name, type(value)())
    try:
        return copy.deepcopy(model)
    finally:
        for m, dicts in saved.items():
            for name, value in dicts.items():
                setattr(m, name, value)


def _token_info(args: Any, kwargs: Any, forwards: int) -> dict[str, Any]:
    """``{"seq_len", "tokens", "batch_size"}`` of one optimizer step from a micro-batch's forward arguments."""
    tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    k = max(forwards, 1)
    batch = int(tensors[0].shape[0]) * k if tensors and tensors[0].dim() else None
    tokens = next((t for t in tensors if t.dim() == 2 and not t.is_floating_point()), None)
    if tokens is None:
        return {"seq_len": None, "tokens": batch or 1, "batch_size": batch}
    return {"seq_len": int(tokens.shape[1]), "tokens": int(tokens.numel()) * k, "batch_size": batch}
