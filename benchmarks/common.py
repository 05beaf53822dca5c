"""Shared by the benchmarks: synchronized wall-clock medians, the devices present, the models timed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], object], device: str = "cpu", repeats: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """The MLP (3x1024) and Transformer encoder (4 layers of 256, 64 tokens) that precision.py and
    jit.py time, with each one's per-sample input shape; both end in 10 classes."""
    mlp = nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, dropout=0.0)
    encoder = nn.Sequential(
        nn.TransformerEncoder(layer, 4, enable_nested_tensor=False), nn.Flatten(), nn.Linear(256 * 64, 10)
    )
    return {"mlp 3x1024": (mlp, (1024,)), "transformer 4x256 seq64": (encoder, (64, 256))}


def int8_verdict(rows: list[dict], key: str = "accuracy", budget: float = 0.01) -> str:
    """The best INT8 row against this project's targets: <= 0.30x fp32's size, >= 1.5x its speed,
    within ``budget`` of its accuracy (or cosine >= 0.99 with ``key='cosine'``)."""
    base = next(r for r in rows if r["level"] == "fp32" and r["backend"] == "torch eager")
    int8 = [r for r in rows if r["level"] == "int8" and "error" not in r]
    if not int8:
        return "no INT8 variant ran"
    ok = [r for r in int8 if (r[key] >= base[key] - budget if key == "accuracy" else r[key] >= 0.99)]
    best = max(ok or int8, key=lambda r: r["speedup"])
    smallest = min(r["size_mb"] / base["size_mb"] for r in int8)
    met = lambda c: "met" if c else "missed"  # noqa: E731
    quality = f"{key} {best[key]:.4f} vs fp32 {base[key]:.4f}"
    return (
        f"INT8 targets: size <= 0.30x: {smallest:.2f}x ({met(smallest <= 0.30)}); speed >= 1.5x: {best['speedup']:.2f}x "
        f"through {best['backend']} ({met(best['speedup'] >= 1.5)}); {quality} ({met(bool(ok))})"
    )


def deploy_verdict(rows: list[dict], model: str) -> str:
    """Issue 22's OpenVINO targets on this machine. ``model="minilm"``: OpenVINO INT8 >= 5x fp32 eager with
    cosine >= 0.99 and OpenVINO fp32 >= 4x; ``model="cnn"``: OpenVINO at least as fast as ONNX Runtime at
    each level (fp32: ``openvino`` vs ``onnxruntime``; int8: ``openvino nncf`` vs ``onnxruntime dynamic``)."""
    got = {(r["level"], r["backend"]): r for r in rows if "error" not in r}
    met = lambda c: "met" if c else "missed"  # noqa: E731
    fp32, int8 = got.get(("fp32", "openvino")), got.get(("int8", "openvino nncf"))
    if model == "minilm":
        parts = [
            f"fp32 >= 4x: {fp32['speedup']:.2f}x ({met(fp32['speedup'] >= 4)})" if fp32 else "fp32: no row ran",
            f"INT8 >= 5x with cosine >= 0.99: {int8['speedup']:.2f}x, cosine {int8['cosine']:.4f} "
            f"({met(int8['speedup'] >= 5 and int8['cosine'] >= 0.99)})"
            if int8
            else "INT8: no row ran",
        ]
        if bf16 := got.get(("bf16", "openvino bf16")):  # what OpenVINO runs an fp32 IR in by default on bf16 CPUs
            parts.append(f"bf16 (OpenVINO's default precision on this CPU) {bf16['speedup']:.2f}x, cosine "
                         f"{bf16['cosine']:.4f}")  # fmt: skip
        return "OpenVINO targets: " + "; ".join(parts)
    parts = []
    for level, ours, theirs in (("fp32", fp32, "onnxruntime"), ("int8", int8, "onnxruntime dynamic")):
        ort = got.get((level, theirs))
        if ours is None or ort is None:
            parts.append(f"{level}: a row did not run")
            continue
        parts.append(f"{level} {ours['latency_ms']:.3f} ms vs ORT {ort['latency_ms']:.3f} ms "
                     f"({met(ours['latency_ms'] <= ort['latency_ms'])})")  # fmt: skip
    return "OpenVINO vs ONNX Runtime (at least as fast): " + "; ".join(parts)
