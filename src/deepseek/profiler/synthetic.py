"""``python -m deepseek.profiler --model NAME``: profile a registered model on a synthetic batch.

The model and batch come from the model's template (:mod:`deepseek.profiler.inputs`). ``mode="train"`` runs
full training steps: forward under the precision's autocast, a surrogate loss (the mean square of every floating
output: the model's cost does not depend on which loss follows it, and every model has one), backward through
the precision's loss scaler, and an AdamW step. ``mode="infer"`` runs forwards under ``torch.inference_mode``.
One unprofiled step first counts the FLOPs (:func:`deepseek.profiler.flops.count_flops`) and warms caches; then
``warmup`` steps run under the profiler unrecorded and ``steps`` are recorded. The batch is already on the
device, so ``data_wait`` is only the hand-over of the same batch (about zero).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from deepseek.amp.policy import PRECISIONS, PrecisionPolicy
from deepseek.profiler.flops import count_flops
from deepseek.profiler.inputs import build_with_example
from deepseek.profiler.metrics import nvtx_wanted, parse_metrics
from deepseek.profiler.report import AttentionTokens, Collector, device_name, write_report
from deepseek.profiler.session import ModuleRanges, StepPhases, make_profiler

MODES = ("train", "infer")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x.to(device) if hasattr(x, "to") else x  # a graph batch


def surrogate_loss(out: Any) -> torch.Tensor:
    """Mean square of every floating tensor of the output (a tensor, tuple/list or dict of them)."""
    parts = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else [out]
    tensors = [t for t in parts if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        raise ValueError("the model's output has no floating tensor to take a loss of")
    return sum(t.float().pow(2).mean() for t in tensors)  # type: ignore[return-value]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; allowed: cpu, auto")
    return dev


def check_options(*, steps: int, warmup: int, mode: str, precision: str, peak_tflops: float | None) -> None:
    """One ValueError naming the option, its value and what is allowed."""
    if steps < 1:
        raise ValueError(f"--steps {steps}: must be 1 or more")
    if warmup < 0:
        raise ValueError(f"--warmup {warmup}: must be 0 or more")
    if mode not in MODES:
        raise ValueError(f"--mode {mode!r}: allowed: {', '.join(MODES)}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: allowed: {', '.join(PRECISIONS)}")
    if peak_tflops is not None and not peak_tflops > 0:
        raise ValueError(f"--peak-tflops {peak_tflops}: must be a positive number of TFLOP/s")


def profile_model(
    model_name: str,
    *,
    batch_size: int,
    output_dir: str | Path,
    steps: int = 5,
    warmup: int = 1,
    mode: str = "train",
    precision: str = "fp32",
    seq_len: int | None = None,
    peak_tflops: float | None = None,
    metrics: list[str] | tuple[str, ...] = (),
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Profile ``model_name`` and write trace, flame graphs and summary.json to ``output_dir``; return the summary."""
    check_options(steps=steps, warmup=warmup, mode=mode, precision=precision, peak_tflops=peak_tflops)
    names = parse_metrics(list(metrics))
    dev = resolve_device(device)
    torch.manual_seed(0)
    model, batch, info = build_with_example(model_name, batch_size=batch_size, seq_len=seq_len, overrides=overrides)
    model, batch = model.to(dev), _to(batch, dev)
    policy = PrecisionPolicy.create(precision, dev, model)
    train = mode == "train"
    model.train(train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    phases = StepPhases(sync=dev.type == "cuda", nvtx=nvtx_wanted(names, dev))

    def step(counting: bool = False) -> None:
        if not counting:
            phases.enter("data_wait")
        inputs = batch
        if not counting:
            phases.enter("forward")
        with policy.autocast(), contextlib.nullcontext() if train else torch.inference_mode():
            out = model(inputs)
            loss = surrogate_loss(out) if train else None
        if not train:
            return
        if not counting:
            phases.enter("backward")
        scaler = policy.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if counting:
            model.zero_grad(set_to_none=True)
            return
        phases.enter("optimizer")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    count, error = None, None
    try:
        with AttentionTokens(model) as seen:  # the analytic formula's tokens: what attention sees (ViT: patches)
            count = count_flops(model, lambda: step(counting=True))
        info = {**info, **seen.info}
    except Exception as exc:  # a model the counter cannot run under: still profile its time
        error = f"{type(exc).__name__}: {exc}"
        step(counting=True)
    collector = Collector(output_dir, dev)
    ranges = ModuleRanges(model, nvtx=phases.nvtx)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    try:
        with make_profiler(dev, wait=0, warmup=warmup, active=steps, on_ready=collector) as prof:
            for i in range(warmup + steps):
                if i == warmup:
                    collector.start()
                step()
                phases.close()
                prof.step()
    finally:
        ranges.remove()
        phases.close()
    meta = {"model": model_name, "mode": mode, "device": str(dev), "device_name": device_name(dev),
            "precision": getattr(policy, "precision", precision), "batch_size": batch_size}  # fmt: skip
    return write_report(collector, meta=meta, model=model, flop_count=count, flop_info=info, metric_names=names,
                        nvtx_ranges=phases.nvtx_count + ranges.nvtx_count,
                        declared_peak=peak_tflops * 1e12 if peak_tflops else None, flop_error=error)  # fmt: skip
