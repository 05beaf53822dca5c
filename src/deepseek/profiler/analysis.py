"""Reading a profile: the step split, time per module (forward and backward), per operator, memory and kernels.

Input is ``prof.events()`` of a :func:`deepseek.profiler.session.make_profiler` run whose steps carry the
``ds::<phase>`` and ``module::<path>`` ranges of :mod:`deepseek.profiler.session`. Torch's own tables
(``key_averages``) know neither phases nor modules, hence this module; it only walks the event tree torch built.

- Phases: each ``ds::<phase>`` range is one piece of a step; a step starts at ``data_wait`` (or at ``forward``
  after ``optimizer``). Communication is the time a collective was in flight (``c10d::``/``gloo:``/``nccl:``
  ranges on any host thread: gloo runs its collectives on worker threads), moved out of the phase it overlapped
  (DDP's all-reduce overlaps backward: that part of backward counts as communication); ``other`` is the part of
  a step's wall time (first range start to last range end) that no phase covers.
- Modules: forward time is the duration of the module's ``module::`` ranges (inclusive of submodules). Backward
  time needs no hook: the profiler records the autograd sequence number of each forward op and of each
  ``autograd::engine::evaluate_function`` range, so a backward node is charged to the modules (innermost and its
  ancestors) whose forward created it.
- Time is host time in microseconds on a CPU; on CUDA, module and operator times are the device time of the
  kernels they launched (``device_time_total``), phases are host time between synchronised boundaries.
"""

from __future__ import annotations

import bisect
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from torch.autograd import DeviceType

from deepseek.profiler.session import MODULE_PREFIX, PHASE_PREFIX, PHASES

COMM = re.compile(r"^(c10d::|gloo:|nccl:|record_param_comms)")
EVALUATE = "autograd::engine::evaluate_function: "
# python frames (with_stack) and the profiler's own markers are not operators
NOT_OPERATOR = re.compile(r"(\.py\(\d+\): |^<built-in|^ProfilerStep|^\[memory\]|^" + re.escape(EVALUATE) + ")")
SPLIT_KEYS = (*PHASES, "communication", "other")


@dataclass
class _Context:
    """Where an event ran: its phase, the module paths around it (outermost first), and whether in backward."""

    phase: str | None = None
    modules: tuple[str, ...] = ()
    in_backward_node: bool = False


@dataclass
class Profile:
    """What :func:`analyze` read. Times are seconds per profiled step (means) unless named otherwise."""

    steps: int
    step_times_s: list[float]
    split_s: dict[str, float]
    module_forward_s: dict[str, float]
    module_backward_s: dict[str, float]
    operators: list[dict[str, Any]]
    module_stacks: dict[tuple[str, ...], float] = field(default_factory=dict)  # microseconds over all steps
    kernels: dict[str, float] = field(default_factory=dict)
    operator_phase: dict[str, str] = field(default_factory=dict)  # the phase where each operator spent most time


def memory_peak_bytes(prof: Any, device_type: str = "CPU") -> int | None:
    """Largest running sum of the profile's allocations less frees (``[memory]`` records, in time order) on
    ``device_type``: how far memory rose above where it stood when recording began. None without records."""
    try:
        records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # no kineto results (an older torch): the summary says unknown
        return None
    records = [e for e in records if str(e.device_type()).rsplit(".", 1)[-1] == device_type]
    if not records:
        return None
    current = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return int(peak)


def _duration_us(event: Any) -> float:
    return float(event.time_range.end - event.time_range.start)


def analyze(events: list[Any], *, cuda: bool = False) -> Profile:
    """Read ``events`` (``prof.events()``); ``cuda`` charges modules and operators their kernels' device time."""
    contexts: dict[int, _Context] = {}

    def context(event: Any) -> _Context:
        chain = []
        e = event
        while e is not None and id(e) not in contexts:
            chain.append(e)
            e = e.cpu_parent
        ctx = contexts[id(e)] if e is not None else _Context()
        for e in reversed(chain):  # outermost first: each event's context from its parent's
            name = e.name
            if name.startswith(PHASE_PREFIX):
                ctx = _Context(name[len(PHASE_PREFIX) :], (), False)
            elif name.startswith(MODULE_PREFIX):
                ctx = _Context(ctx.phase, (*ctx.modules, name[len(MODULE_PREFIX) :]), ctx.in_backward_node)
            elif name.startswith(EVALUATE):
                ctx = _Context(ctx.phase, backward_modules.get(_backward_key(e), ()), True)
            contexts[id(e)] = ctx
        return ctx

    # host events only: on CUDA, kernels reach us through their launching op (``e.kernels``), and the GPU-side
    # copies of our ranges (user annotations with the same names) would count every phase and module twice
    ordered = sorted((e for e in events if e.device_type == DeviceType.CPU), key=lambda e: e.time_range.start)
    backward_modules: dict[tuple[int, int], tuple[str, ...]] = {}
    for e in ordered:  # forward ops first: the sequence numbers that backward nodes refer to
        if e.sequence_nr >= 0 and not e.name.startswith(EVALUATE):
            ctx = context(e)
            if ctx.modules and not ctx.in_backward_node:
                backward_modules.setdefault((e.thread, e.sequence_nr), ctx.modules)
    contexts.clear()  # evaluate_function contexts need the complete map

    phases = [e for e in ordered if e.name.startswith(PHASE_PREFIX)]
    steps = _group_steps(phases)
    n = max(len(steps), 1)
    split = defaultdict(float)
    step_times = []
    for step in steps:
        wall = step[-1].time_range.end - step[0].time_range.start
        covered = sum(_duration_us(e) for e in step)
        step_times.append(wall / 1e6)
        for e in step:
            split[e.name[len(PHASE_PREFIX) :]] += _duration_us(e)
        split["other"] += max(wall - covered, 0.0)

    fwd, bwd = defaultdict(float), defaultdict(float)
    ops: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "self_us": 0.0, "total_us": 0.0})
    stacks: dict[tuple[str, ...], float] = defaultdict(float)
    by_phase: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    kernel_count, kernel_us, launches, launch_us = 0, 0.0, 0, 0.0
    comm: list[tuple[float, float]] = []
    starts = [e.time_range.start for e in phases]

    def phase_at(t: float) -> str | None:
        """The phase whose range holds time ``t``: for events on other threads (CUDA's autograd device thread)."""
        i = bisect.bisect_right(starts, t) - 1
        return phases[i].name[len(PHASE_PREFIX) :] if i >= 0 and t <= phases[i].time_range.end else None

    for e in ordered:
        name = e.name
        ctx = context(e)
        if ctx.phase is None:
            ctx = _Context(phase_at(e.time_range.start), ctx.modules, ctx.in_backward_node)
        if name.startswith(MODULE_PREFIX):
            fwd[name[len(MODULE_PREFIX) :]] += e.device_time_total if cuda else _duration_us(e)
            continue
        if name.startswith(EVALUATE):
            for path in ctx.modules:
                bwd[path] += e.device_time_total if cuda else _duration_us(e)
            continue
        if COMM.match(name) and not (e.cpu_parent and COMM.match(e.cpu_parent.name)):
            comm.append((e.time_range.start, e.time_range.end))
        if "LaunchKernel" in name:
            launches += 1
            launch_us += _duration_us(e)
        kernels = getattr(e, "kernels", None) or []
        kernel_count += len(kernels)
        kernel_us += sum(k.duration for k in kernels)
        if name.startswith(PHASE_PREFIX) or getattr(e, "is_python_function", False) or NOT_OPERATOR.search(name):
            continue
        self_us = e.self_device_time_total if cuda else e.self_cpu_time_total
        row = ops[name]
        row["calls"] += 1
        row["self_us"] += self_us
        row["total_us"] += e.device_time_total if cuda else e.cpu_time_total
        if self_us > 0 and ctx.phase is not None:
            stacks[(ctx.phase, *ctx.modules, name)] += self_us
            by_phase[name][ctx.phase] += self_us
    for phase_event in (e for step in steps for e in step):  # time with a collective in flight, on any thread
        overlap = _overlap(phase_event.time_range.start, phase_event.time_range.end, comm)
        split[phase_event.name[len(PHASE_PREFIX) :]] -= overlap
        split["communication"] += overlap
    operators = [
        {"name": k, "calls": v["calls"] / n, "self_s": v["self_us"] / 1e6 / n, "total_s": v["total_us"] / 1e6 / n}
        for k, v in sorted(ops.items(), key=lambda kv: -kv[1]["self_us"])
    ]
    return Profile(
        steps=len(steps),
        step_times_s=step_times,
        split_s={k: split.get(k, 0.0) / 1e6 / n for k in SPLIT_KEYS},
        module_forward_s={k: v / 1e6 / n for k, v in fwd.items()},
        module_backward_s={k: v / 1e6 / n for k, v in bwd.items()},
        operators=operators,
        module_stacks=dict(stacks),
        operator_phase={k: max(v, key=v.__getitem__) for k, v in by_phase.items()},
        kernels={"count_per_step": kernel_count / n, "busy_s_per_step": kernel_us / 1e6 / n,
                 "launches_per_step": launches / n, "launch_us_mean": launch_us / launches if launches else 0.0},
    )  # fmt: skip


def _overlap(start: float, end: float, intervals: list[tuple[float, float]]) -> float:
    """Length of ``[start, end]`` covered by the union of ``intervals``."""
    covered, reached = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reached), min(b, end)
        if b > a:
            covered += b - a
            reached = b
    return covered


def _backward_key(event: Any) -> tuple[int, int]:
    """The (forward thread, sequence number) of the forward op that created this backward node."""
    return (getattr(event, "fwd_thread", None) or event.thread, event.sequence_nr)


def _group_steps(phases: list[Any]) -> list[list[Any]]:
    """Phase ranges in time order -> one list per step: a step starts at data_wait, or at forward after optimizer."""
    steps: list[list[Any]] = []
    previous = None
    for e in phases:
        phase = e.name[len(PHASE_PREFIX) :]
        if not steps or phase == "data_wait" or (phase == "forward" and previous == "optimizer"):
            steps.append([])
        steps[-1].append(e)
        previous = phase
    # a window that ended early (a checkpoint, the run's end) leaves the next step's data wait alone: not a step
    return [step for step in steps if any(e.name != PHASE_PREFIX + "data_wait" for e in step)]
