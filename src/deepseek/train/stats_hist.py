"""Fixed, symmetric log-binned histograms computed on the device (what :mod:`deepseek.train.stats` records).

The bins are the same at every step and for every tensor, so histograms of different steps, layers and ranks add
up and compare bin by bin. ``bins`` = B bins have B+1 increasing edges, symmetric around zero
(``edges[i] == -edges[B - i]``): on each side ``K = (B - 1) // 2`` bins log-spaced in magnitude from ``lo``
(1e-8 by default) to ``hi`` (1e2), and in the middle the tiny magnitudes: one bin ``[-lo, lo)`` holding zero when
B is odd; two bins ``[-lo, 0)`` and ``[0, lo)`` (zero in the second) when B is even, where 0 is the middle edge.
A value goes to the bin of its magnitude on its own side (the two sides mirror each other): ``e_k <= |x| <
e_(k+1)``, up to float rounding of the logarithm for a value exactly on an edge; ``|x| < lo`` goes to the middle.
The two outermost bins are open: they also count values (and infinities) beyond ``-hi`` / ``hi``. NaNs are not
counted.

Counting computes each value's bin index from ``log2|x|`` with elementwise torch ops, then ``torch.bincount`` on a
CPU or ``index_put_(accumulate=True)`` elsewhere (CUDA's bincount syncs with the host to size its output):
deterministic on CPU and CUDA (``torch.histc`` is flagged non-deterministic on CUDA and its bins are linear), about
4x faster on a CPU than ``torch.bucketize`` against the edges (0.48 ms against 2.1 ms for 131k floats, one thread),
and exact integer counts. Written here because torch
has no fixed-edge, open-ended, NaN-dropping log histogram that stays on the device.
"""

from __future__ import annotations

import math

import torch

DEFAULT_MIN_MAGNITUDE = 1e-8
DEFAULT_MAX_MAGNITUDE = 1e2


def log_bin_edges(bins: int, lo: float = DEFAULT_MIN_MAGNITUDE, hi: float = DEFAULT_MAX_MAGNITUDE) -> list[float]:
    """The ``bins + 1`` edges (see the module docstring). Raises ValueError for fewer than 3 bins or bad bounds."""
    if not isinstance(bins, int) or bins < 3:
        raise ValueError(f"histogram_bins: {bins!r} is not allowed; use an integer of at least 3")
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"histogram magnitudes: lo={lo!r}, hi={hi!r}; need 0 < lo < hi < inf")
    side = (bins - 1) // 2  # magnitude bins per side
    mags = [lo * (hi / lo) ** (k / side) for k in range(side + 1)]  # lo .. hi, side + 1 edges
    mags[-1] = hi  # exact, not hi * (1 +- eps)
    middle = [0.0] if bins % 2 == 0 else []
    return [-m for m in reversed(mags)] + middle + mags


class LogHistogram:
    """Counts of a tensor's values in the fixed bins, on the tensor's device.

    ``count(x)``: x of any shape and floating dtype -> int64 tensor ``[B]`` on x's device.
    """

    bincount_devices: tuple[str, ...] = ("cpu",)  # device types counted with bincount (index_put_ elsewhere)

    def __init__(self, bins: int, lo: float = DEFAULT_MIN_MAGNITUDE, hi: float = DEFAULT_MAX_MAGNITUDE) -> None:
        self.bins = bins
        self.edges = log_bin_edges(bins, lo, hi)
        self._side = (bins - 1) // 2
        self._log2_lo = math.log2(lo)
        self._per_log2 = self._side / math.log2(hi / lo)  # magnitude bins per factor of 2
        self._ones: dict[torch.device, torch.Tensor] = {}

    @torch.no_grad()
    def count(self, x: torch.Tensor) -> torch.Tensor:
        """``[B]`` int64 counts of ``x``'s values (NaNs left out)."""
        x = x.detach().reshape(-1)
        # The magnitude bin from log2|x| (a handful of elementwise passes; torch.bucketize's binary search is
        # about 4x slower on CPUs): j = floor((log2|x| - log2 lo) * bins-per-log2) in -1 (tiny, zero) .. side-1 (the
        # open outer bin, also for inf), then mirrored by sign around the middle.
        t = x.float().abs() if x.dtype != torch.float64 else x.abs()
        t.log2_().sub_(self._log2_lo).mul_(self._per_log2).floor_().clamp_(-1, self._side - 1).add_(1)
        t.copysign_(x).add_(self._side)  # odd B: middle bin is index side
        if self.bins % 2 == 0:  # even B: [-lo, 0) is index side, [0, lo) index side+1 (and so on to the right)
            t.add_(x.ge(0))
        t.nan_to_num_(nan=self.bins)  # NaN: an extra bin B, dropped below
        if x.device.type in self.bincount_devices:
            return torch.bincount(t.to(torch.int32), minlength=self.bins + 1)[: self.bins]
        # On accelerators bincount reads the indices' min and max back to the host (a sync per call);
        # index_put_ with accumulate sums on the device (sort-based on CUDA: deterministic, no atomics).
        counts = torch.zeros(self.bins + 1, dtype=torch.int64, device=x.device)
        counts.index_put_((t.to(torch.int64),), self._one(x.device), accumulate=True)
        return counts[: self.bins]

    def _one(self, device: torch.device) -> torch.Tensor:
        one = self._ones.get(device)
        if one is None:  # once per device: no host-to-device copy at recording steps
            one = self._ones[device] = torch.ones((), dtype=torch.int64, device=device)
        return one


def bin_values(edges: list[float]) -> list[float]:
    """A representative value per bin (the geometric middle of a magnitude bin, signed; 0 for the tiny
    bins around zero): for approximate summaries such as TensorBoard's sum and sum of squares."""
    values = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if a < 0 < b or a == 0 or b == 0:
            values.append(0.0)
        elif a > 0:
            values.append(math.sqrt(a * b))
        else:
            values.append(-math.sqrt(a * b))
    return values
