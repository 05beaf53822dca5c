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
