"""Running steps under ``torch.profiler``: the labelled ranges a profile is later read from.

Everything here is torch's machinery: :func:`make_profiler` is ``torch.profiler.profile`` with a
``schedule(wait, warmup, active)``, shapes, memory and Python stacks; ranges are
``torch.autograd.profiler.record_function`` (and ``torch.cuda.nvtx`` when asked). What we add is naming:

- ``ds::data_wait``, ``ds::forward``, ``ds::backward``, ``ds::optimizer``: the phases of one training step,
  opened and closed by :class:`StepPhases` (one phase open at a time, so the phases tile the step);
- ``module::<path>``: one range per module call, from forward pre/post hooks (:class:`ModuleRanges`). Backward
  is NOT hooked (full backward hooks wrap a module's outputs in extra autograd nodes, which breaks in-place ops
  after them): :mod:`deepseek.profiler.analysis` attributes backward time to modules through the autograd
  sequence numbers the profiler records, which needs no hook at all.

Neither touches tensors, RNG or the autograd graph, so a profiled step computes exactly what an unprofiled one
does. On CUDA the phase boundaries synchronise the device (inside the profiled window only): host time between
two boundaries is then the device time of that phase.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile, schedule

from deepseek.profiler.flame import stack_profiler_kwargs

PHASES = ("data_wait", "forward", "backward", "optimizer")
PHASE_PREFIX = "ds::"
MODULE_PREFIX = "module::"


def make_profiler(
    device: torch.device,
    *,
    wait: int,
    warmup: int,
    active: int,
    on_ready: Callable[[profile], None],
    with_stack: bool = True,
) -> profile:
    """``torch.profiler.profile`` over ``wait + warmup + active`` steps (one cycle), CUDA activity on a GPU,
    recording shapes, memory and (``with_stack``) Python stacks; ``on_ready(prof)`` runs once the active steps
    are done."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with warnings.catch_warnings():  # warmup=0 is a choice (the callback's first step may be the run's first)
        warnings.filterwarnings("ignore", message="Profiler won't be using warmup")
        steps = schedule(wait=wait, warmup=warmup, active=active, repeat=1)
    return profile(
        activities=activities,
        schedule=steps,
        on_trace_ready=on_ready,
        record_shapes=True,
        profile_memory=True,
        **(stack_profiler_kwargs() if with_stack else {}),  # with_stack + verbose: events carry Python stacks
    )


class _Range:
    """One open ``record_function`` range (plus an NVTX range when ``nvtx``)."""

    def __init__(self, name: str, nvtx: bool) -> None:
        self.rf, self.nvtx = record_function(name), nvtx
        self.rf.__enter__()
        if nvtx:
            torch.cuda.nvtx.range_push(name)

    def close(self) -> None:
        if self.nvtx:
            torch.cuda.nvtx.range_pop()
        self.rf.__exit__(None, None, None)


class StepPhases:
    """``enter(phase)`` closes the open phase range and opens ``ds::<phase>``; ``close()`` closes it.

    ``sync`` (CUDA): synchronise the device at every boundary, so that each phase range spans its device work.
    ``nvtx``: also push/pop NVTX ranges (seen by Nsight Systems); ``nvtx_count`` counts them."""

    def __init__(self, *, sync: bool = False, nvtx: bool = False) -> None:
        self.sync, self.nvtx = sync, nvtx
        self.current: str | None = None
        self._open: _Range | None = None
        self.nvtx_count = 0

    def enter(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r}: expected one of {', '.join(PHASES)}")
        if phase == self.current:
            return
        self.close()
        self._open, self.current = _Range(PHASE_PREFIX + phase, self.nvtx), phase
        self.nvtx_count += self.nvtx

    def close(self) -> None:
        if self._open is not None:
            if self.sync:
                torch.cuda.synchronize()
            self._open.close()
            self._open = self.current = None


class ModuleRanges:
    """A ``module::<path>`` range around every call of every submodule of ``model`` (the root excluded: its
    time is the forward phase). ``on_root_start`` / ``on_root_end`` run around each call of the root itself
    (the callback uses them to switch between the forward and backward phases); ``root`` is what the step calls
    (a DDP wrapper of ``model``; default ``model``). ``active()`` (default: always) says whether a call is
    recorded: the callback leaves out the forwards of validation inside a training step. :meth:`remove` takes
    every hook off again."""

    def __init__(
        self,
        model: nn.Module,
        *,
        root: nn.Module | None = None,
        nvtx: bool = False,
        on_root_start: Callable[[], None] | None = None,
        on_root_end: Callable[[], None] | None = None,
        active: Callable[[], bool] | None = None,
    ) -> None:
        self.nvtx = nvtx
        self.active = active or (lambda: True)
        self.nvtx_count = 0
        self._stack: list[_Range | None] = []  # None: a call not recorded (keeps pre and post calls paired)
        self._handles: list[Any] = []
        for path, module in model.named_modules():
            if path:
                self._handles.append(module.register_forward_pre_hook(self._pre(path)))
                self._handles.append(module.register_forward_hook(self._post, always_call=True))
        root = model if root is None else root
        if on_root_start is not None:
            self._handles.append(root.register_forward_pre_hook(lambda *_: on_root_start() if self.active() else None))
        if on_root_end is not None:
            self._handles.append(
                root.register_forward_hook(lambda *_: on_root_end() if self.active() else None, always_call=True)
            )

    def _pre(self, path: str) -> Callable[..., None]:
        name = MODULE_PREFIX + path

        def pre(module: nn.Module, args: Any) -> None:
            recorded = self.active()
            self._stack.append(_Range(name, self.nvtx) if recorded else None)
            self.nvtx_count += self.nvtx and recorded

        return pre

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._stack and (entry := self._stack.pop()) is not None:  # always_call: balanced also after a raise
            entry.close()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        while self._stack:
            if (entry := self._stack.pop()) is not None:
                entry.close()
