"""``--metrics``: extra measurements of a profiled window, each with what it means.

``gpu_util``, ``nvtx_range`` and ``kernel_launch`` need CUDA: on a CPU their value is the string ``"needs CUDA"``
(and the terminal prints one line saying so), never an error. On CUDA they come from torch: the profiler's kernel
events (``FunctionEvent.kernels`` and the ``cudaLaunchKernel`` runtime calls), ``torch.cuda.nvtx`` ranges pushed
around every phase and module call, and ``torch.cuda.utilization()`` (NVML, via pynvml when installed).
``cpu_util`` works everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

NEEDS_CUDA = "needs CUDA"


@dataclass(frozen=True)
class Metric:
    name: str
    cuda_only: bool
    meaning: str


METRICS = {
    m.name: m
    for m in (
        Metric("gpu_util", True, "share of the profiled steps' wall time the GPU was running kernels (from the "
               "profiler's kernel events), and NVML's utilization percent sampled at the end (null without pynvml)"),
        Metric("nvtx_range", True, "NVTX ranges pushed for every phase (ds::forward ...) and module call "
               "(module::<path>), for Nsight Systems (`nsys profile python -m deepseek.profiler ...`); the value is "
               "how many were pushed (warm-up and profiled steps)"),
        Metric("kernel_launch", True, "CUDA kernels per step, kernel launches per step and the mean host time of "
               "one launch in microseconds (many small kernels: launch-bound; try torch.compile or CUDA graphs)"),
        Metric("cpu_util", False, "process CPU time / wall time over the profiled steps (1.0 = one core busy; "
               "torch's intra-op threads can take it above 1)"),
    )
}  # fmt: skip


def parse_metrics(names: list[str] | tuple[str, ...] | str, option: str = "--metrics") -> list[str]:
    """``"gpu_util,nvtx_range"`` or a list -> checked names; ValueError naming ``option``, the unknown name and the
    allowed ones."""
    items = names.split(",") if isinstance(names, str) else [n for part in names for n in str(part).split(",")]
    items = [n.strip() for n in items if n.strip()]
    unknown = [n for n in items if n not in METRICS]
    if unknown:
        raise ValueError(f"{option}: {', '.join(unknown)} is not a metric; allowed: {', '.join(METRICS)} (or help)")
    return list(dict.fromkeys(items))


def metrics_help() -> str:
    """The lines ``--metrics help`` prints: each metric, whether it needs CUDA, and what it means."""
    width = max(len(n) for n in METRICS)
    return "\n".join(f"{m.name:<{width}}  {'[CUDA] ' if m.cuda_only else ''}{m.meaning}" for m in METRICS.values())


def nvtx_wanted(names: list[str], device: torch.device) -> bool:
    return "nvtx_range" in names and device.type == "cuda"


def collect(
    names: list[str],
    *,
    device: torch.device,
    kernels: dict[str, float],
    step_time_s: float,
    cpu_s: float,
    wall_s: float,
    nvtx_ranges: int,
) -> dict[str, Any]:
    """``{name: value or "needs CUDA"}`` for the metrics asked for (see :data:`METRICS` for each meaning)."""
    out: dict[str, Any] = {}
    cuda = device.type == "cuda"
    for name in names:
        if METRICS[name].cuda_only and not cuda:
            out[name] = NEEDS_CUDA
        elif name == "gpu_util":
            out[name] = {"busy_share": kernels.get("busy_s_per_step", 0.0) / step_time_s if step_time_s else None,
                         "nvml_percent": _nvml_utilization(device)}  # fmt: skip
        elif name == "nvtx_range":
            out[name] = {"ranges_pushed": nvtx_ranges}
        elif name == "kernel_launch":
            out[name] = {k: kernels.get(k, 0.0) for k in ("count_per_step", "launches_per_step", "launch_us_mean")}
        elif name == "cpu_util":
            out[name] = cpu_s / wall_s if wall_s > 0 else None
    return out


def _nvml_utilization(device: torch.device) -> float | None:
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or NVML unavailable: the kernel busy share still says it
        return None


def needs_cuda_lines(values: dict[str, Any], device: torch.device) -> list[str]:
    """One line per CUDA-only metric that could not run here."""
    return [f"{name}: needs CUDA (this run is on {device.type}); skipped" for name, v in values.items()
            if v == NEEDS_CUDA]  # fmt: skip
