"""Activation range calibration from a histogram: minmax, percentile, MSE and KL (entropy).

``clip_range(hist, lo, hi, method)`` turns a histogram of observed values over ``[lo, hi]`` into
the range to quantize. Ranges that include 0 on both sides are searched symmetrically on the
folded ``|x|`` histogram; one-sided ones (after ReLU) from their low end.

- ``minmax``: the observed range; one outlier stretches it for everyone.
- ``percentile``: drops ``100 - p`` percent of the mass from each tail that exists.
- ``mse``: the clip that minimises the expected squared error: rounding (step^2 / 12) inside,
  clipping distance outside.
- ``kl``: TensorRT's entropy calibration: for each candidate clip, compare the clipped
  distribution P (outliers folded into its last bin) with its quantized version Q and keep the
  clip with the smallest KL(P || Q).

Written here because torchao's pt2e observers offer min/max and an L2 search over their
histogram, but no percentile or KL calibration; :class:`CalibrationObserver` plugs these into
the pt2e flow (``X86InductorQuantizer``).
"""

from __future__ import annotations

import numpy as np
import torch
from torchao.quantization.pt2e.observer import HistogramObserver

METHODS = ("minmax", "percentile", "mse", "kl")


def _fold(hist: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, float, bool]:
    """The histogram to search: ``(counts over [0, extent], extent, symmetric)``."""
    if lo < 0 < hi:
        edges = np.linspace(lo, hi, len(hist) + 1)
        centers = np.abs((edges[:-1] + edges[1:]) / 2)
        extent = max(-lo, hi)
        folded, _ = np.histogram(centers, bins=len(hist), range=(0.0, extent), weights=hist)
        return folded, extent, True
    if hi <= 0:  # all negative: mirror
        return hist[::-1].copy(), hi - lo, False
    return hist.copy(), hi - lo, False


def _unfold(t: float, lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    if symmetric:
        return max(lo, -t), min(hi, t)
    return (lo, lo + t) if hi > 0 else (hi - t, hi)


def _kl_threshold(hist: np.ndarray, levels: int) -> int:
    """The bin count ``i`` whose clip minimises KL(P || Q) (TensorRT's entropy calibration)."""
    n = len(hist)
    best, best_i = np.inf, n
    total_beyond = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # mass at bins >= i
    for i in [*range(levels, n, max(1, (n - levels) // 240)), n]:  # ~240 candidate clips
        p = hist[:i].astype(np.float64).copy()
        p[-1] += total_beyond[i]
        if p.sum() == 0:
            continue
        # Q: hist[:i] merged into `levels` chunks, each chunk spread evenly over its non-empty bins
        chunks = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for idx in chunks:
            nonzero = hist[idx] > 0
            if nonzero.any():
                q[idx[nonzero]] = hist[idx].sum() / nonzero.sum()
        p /= p.sum()
        q = np.where(q > 0, q, 1e-12)  # Q may miss the outlier bin; smooth instead of dividing by 0
        q /= q.sum()
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl < best:
            best, best_i = kl, i
    return best_i


def _mse_threshold(hist: np.ndarray, width: float, levels: int) -> int:
    centers = (np.arange(len(hist)) + 0.5) * width
    best, best_i = np.inf, len(hist)
    for i in range(max(1, len(hist) // 64), len(hist) + 1, max(1, len(hist) // 512)):
        t = i * width
        step = t / (levels - 1)
        inside = hist[:i].sum() * step**2 / 12
        outside = float(np.sum(hist[i:] * (centers[i:] - t) ** 2))
        if inside + outside < best:
            best, best_i = inside + outside, i
    return best_i


def clip_range(
    hist: np.ndarray | torch.Tensor,
    lo: float,
    hi: float,
    method: str = "kl",
    num_bits: int = 8,
    percentile: float = 99.99,
) -> tuple[float, float]:
    """The range ``(lo, hi)`` to quantize, from ``hist`` (counts of equal bins over ``[lo, hi]``)."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}; got {method!r}")
    hist = hist.detach().cpu().double().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist, float)
    if method == "minmax" or hi <= lo or hist.sum() == 0:
        return lo, hi
    if method == "percentile":
        cdf = np.cumsum(hist) / hist.sum()
        edges = np.linspace(lo, hi, len(hist) + 1)
        tail = 1 - percentile / 100
        low = edges[np.searchsorted(cdf, tail)] if lo < 0 else lo
        high = edges[min(np.searchsorted(cdf, 1 - tail) + 1, len(hist))]
        return float(low), float(high)
    folded, extent, symmetric = _fold(hist, lo, hi)
    width = extent / len(folded)
    levels = 2 ** (num_bits - 1) if symmetric else 2**num_bits
    i = _kl_threshold(folded, levels) if method == "kl" else _mse_threshold(folded, width, levels)
    return _unfold(i * width, lo, hi, symmetric)


class CalibrationObserver(HistogramObserver):
    """torchao's pt2e ``HistogramObserver`` with the range chosen by :func:`clip_range`."""

    def __init__(self, method: str = "kl", percentile: float = 99.99, symmetric: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(METHODS)}; got {method!r}")
        self.method, self.percentile, self.symmetric = method, percentile, symmetric

    @torch.no_grad()
    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.histogram.sum() == 0 or self.min_val.numel() == 0 or self.min_val == float("inf"):
            return super().calculate_qparams()
        bits = int(np.log2(self.quant_max - self.quant_min + 1))
        lo, hi = clip_range(
            self.histogram, float(self.min_val), float(self.max_val), self.method, bits, self.percentile
        )
        if self.symmetric:  # a range centred on 0 (still stored as uint8 with a zero point)
            lo, hi = -max(-lo, hi), max(-lo, hi)
        return self._calculate_qparams(torch.tensor([lo]), torch.tensor([hi]))
