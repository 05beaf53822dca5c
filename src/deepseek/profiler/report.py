"""What a finished profiling window leaves under the output directory, shared by the CLI and the callback.

:class:`Collector` is the profiler's ``on_trace_ready``: it writes the Chrome/Perfetto trace and reads the events
(:func:`deepseek.profiler.analysis.analyze`) and the Python stacks (:func:`deepseek.profiler.flame.stacks_from_profile`)
while torch still holds them. :func:`write_report` then writes the flame graphs, the collapsed stacks and
``summary.json``, and returns the summary.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deepseek.profiler import flame
from deepseek.profiler.analysis import Profile, analyze, memory_peak_bytes
from deepseek.profiler.flops import FlopCount, attention_modules, reconcile
from deepseek.profiler.metrics import collect
from deepseek.profiler.peaks import peak_flops
from deepseek.profiler.summary import build_summary

FILES = {"trace": "trace.json", "flamegraph_stack": "flamegraph_stack.svg", "flamegraph_module": "flamegraph_module.svg",
         "stacks": "stacks.txt", "stacks_module": "stacks_module.txt"}  # fmt: skip
DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16, "progressive": torch.float16}


class Collector:
    """``on_trace_ready``: writes ``trace.json`` into ``output_dir`` and keeps the analysed profile and stacks.
    Also times the window: ``start()`` at its first profiled step (wall and process CPU clocks)."""

    def __init__(self, output_dir: str | Path, device: torch.device) -> None:
        self.output_dir, self.device = Path(output_dir), device
        self.profile: Profile | None = None
        self.stacks: dict[tuple[str, ...], float] = {}
        self.stack_note: str | None = None
        self.cpu_memory_peak: int | None = None
        self._t0 = self._cpu0 = 0.0
        self.wall_s = self.cpu_s = 0.0

    def start(self) -> None:
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def __call__(self, prof: torch.profiler.profile) -> None:
        self.wall_s, self.cpu_s = time.perf_counter() - self._t0, time.process_time() - self._cpu0
        self.output_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.output_dir / FILES["trace"]))
        cuda = self.device.type == "cuda"
        self.profile = analyze(list(prof.events()), cuda=cuda)
        self.cpu_memory_peak = memory_peak_bytes(prof, "CPU")
        if self.stack_note is not None:  # recorded without Python stacks on purpose
            return
        try:
            self.stacks = flame.stacks_from_profile(prof, metric="self_device" if cuda else "self_cpu")
        except ValueError as exc:  # no Python stacks recorded: the module graph still has every operator
            self.stack_note = str(exc)


class AttentionTokens:
    """Context manager: records the sequence length and token count the model's first attention module sees
    (its first input, ``(batch, seq, dim)``, or ``(seq, batch, dim)`` when ``batch_first`` is False). The analytic
    formula needs them, and for a vision transformer they are its patches, not anything in the input's shape.
    ``info`` stays empty for a model without attention modules."""

    def __init__(self, model: nn.Module) -> None:
        self.info: dict[str, int] = {}
        found = attention_modules(model)
        self._module = found[0][1] if found else None
        self._handle: Any = None

    def _pre(self, module: nn.Module, args: Any) -> None:
        x = args[0] if args else None
        if not self.info and isinstance(x, torch.Tensor) and x.dim() == 3:
            seq = x.shape[0] if getattr(module, "batch_first", True) is False else x.shape[1]
            self.info = {"seq_len": int(seq), "tokens": int(x.shape[0] * x.shape[1])}

    def __enter__(self) -> AttentionTokens:
        if self._module is not None:
            self._handle = self._module.register_forward_pre_hook(self._pre)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()


def count_note(
    count: FlopCount | None, model: nn.Module, info: dict[str, Any], mode: str, error: str | None = None
) -> dict[str, Any]:
    """:func:`reconcile`'s three counts for one step (or the reason there are none)."""
    if count is None:
        return {"notes": [f"FLOPs not counted: {error}"]}
    seq_len = info.get("seq_len") or 1
    try:
        return reconcile(model, count, seq_len=seq_len, tokens=int(info.get("tokens") or seq_len), mode=mode)
    except Exception as exc:  # a model the analytic side cannot read: keep the dispatcher's count
        return {"dispatcher": count.total, "notes": [f"FLOPs not reconciled: {type(exc).__name__}: {exc}"]}


def memory_of(collector: Collector) -> dict[str, Any]:
    if collector.device.type == "cuda":
        return {
            "peak_bytes": int(torch.cuda.max_memory_allocated(collector.device)),
            "device": str(collector.device),
            "how": "torch.cuda.max_memory_allocated over the profiled window (peak stats reset at its start)",
        }
    return {"peak_bytes": collector.cpu_memory_peak, "device": "cpu", "how": "largest running sum of CPU allocations "
            "less frees over the profiled steps (the profiler's [memory] records), above the memory in use when "
            "recording began"}  # fmt: skip


def write_report(
    collector: Collector,
    *,
    meta: dict[str, Any],
    model: nn.Module,
    flop_count: FlopCount | None,
    flop_info: dict[str, Any],
    metric_names: list[str],
    nvtx_ranges: int = 0,
    declared_peak: float | None = None,
    flop_error: str | None = None,
) -> dict[str, Any]:
    """Write the flame graphs, collapsed stacks and summary.json next to the trace; return the summary."""
    profile = collector.profile
    if profile is None or profile.steps == 0:
        raise RuntimeError("the profiler recorded no step (the window never completed)")
    out = collector.output_dir
    paths = {k: str(out / v) for k, v in FILES.items()}
    python_stacks = collector.stacks or {("(no Python stacks recorded)",): 1.0}
    flame.write_collapsed(python_stacks, paths["stacks"])
    flame.write_collapsed(profile.module_stacks, paths["stacks_module"])
    unit = "us"
    flame.write_flamegraph(
        python_stacks,
        paths["flamegraph_stack"],
        title=f"{meta['model']}: operator self time by Python stack ({unit})",
        unit=unit,
    )
    flame.write_flamegraph(
        profile.module_stacks,
        paths["flamegraph_module"],
        title=f"{meta['model']}: operator self time by phase and module ({unit})",
        unit=unit,
    )
    precision = meta["precision"]
    peak = peak_flops(collector.device, DTYPES.get(precision, torch.float32), declared_peak)
    mean_step = sum(profile.step_times_s) / len(profile.step_times_s)
    metrics = collect(
        metric_names,
        device=collector.device,
        kernels=profile.kernels,
        step_time_s=mean_step,
        cpu_s=collector.cpu_s,
        wall_s=collector.wall_s,
        nvtx_ranges=nvtx_ranges,
    )
    flops = count_note(flop_count, model, flop_info, meta["mode"], flop_error)
    if collector.stack_note:
        flops.setdefault("notes", []).append(f"flame graph by stack: {collector.stack_note}")
    summary = build_summary(meta=meta, profile=profile, flops=flops, flop_count=flop_count, peak=peak,
                            memory=memory_of(collector), metrics=metrics,
                            files={k: os.path.relpath(v, out) for k, v in paths.items()})  # fmt: skip
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / "summary.json")
    return summary


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU's model name and torch's thread count."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0]} ({torch.get_num_threads()} threads)" if names else "cpu"
