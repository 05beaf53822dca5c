"""Fit the alpha-beta cost model's constants (latency, per-byte link cost, per-byte reduction cost) to timings.

The design matrix comes from :func:`deepseek.distributed.cost.coefficients`, so the fit and the model agree by
construction: sample ``i`` (op, ``p`` ranks, ``n`` bytes, ``t`` seconds) gives the row ``(a, b, c)`` with
``t ~ a alpha + b beta + c gamma``. Rows are weighted by ``1/t`` so that the fit minimises the *relative*
error: a 1 KiB message (microseconds) counts as much as a 64 MiB one (tenths of a second).

Written by hand: non-negative least squares is ``scipy.optimize.nnls``, but this layer may import only torch,
numpy and the stdlib, and with at most three unknowns the exact NNLS solution is found by solving the
unconstrained problem on every subset of the columns (eight at most) and keeping the best feasible one.

Identifiability: for all-reduce and reduce-scatter the ``beta`` and ``gamma`` columns are both proportional to
the bytes, so timings of those ops alone (at any ``p``) cannot separate link from reduction cost; such a fit
sets ``gamma`` to 0 (``gamma_identified`` False: ``beta`` then holds both). Mixing in an op without a
reduction (all-gather, broadcast, all-to-all) separates them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepseek.distributed.cost import Link, coefficients

REDUCING_OPS = ("all_reduce", "reduce_scatter")


@dataclass(frozen=True)
class LinkFit:
    """A fitted :class:`Link` and how well it reproduces the samples it was fitted on.

    ``ops``, ``ps``, ``sizes``, ``seconds``, ``predicted``, ``rel_errors``: one entry per sample (``rel_errors``
    = ``predicted / measured - 1``). ``gamma_identified``: whether the samples could separate ``gamma`` from
    ``beta`` (see the module docstring).
    """

    link: Link
    ops: tuple[str, ...]
    ps: tuple[int, ...]
    sizes: tuple[float, ...]
    seconds: tuple[float, ...]
    predicted: tuple[float, ...]
    rel_errors: tuple[float, ...]
    gamma_identified: bool

    def _selected(self, min_bytes: float) -> list[float]:
        return [abs(e) for e, n in zip(self.rel_errors, self.sizes) if n >= min_bytes]

    def max_rel_error(self, min_bytes: float = 65536) -> float:
        """Largest ``|predicted/measured - 1|`` over samples of ``min_bytes`` or more (nan when there are none)."""
        errors = self._selected(min_bytes)
        return max(errors) if errors else math.nan

    def rms_rel_error(self, min_bytes: float = 0) -> float:
        """Root mean square of the relative errors over samples of ``min_bytes`` or more (nan when none)."""
        errors = self._selected(min_bytes)
        return math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else math.nan

    def to_dict(self) -> dict:
        """JSON-ready: the constants, ``beta_gbps`` (1/beta in GB/s) and the fit's errors."""
        beta = self.link.beta
        return {"alpha": self.link.alpha, "beta": beta, "gamma": self.link.gamma,
                "beta_gbps": (1.0 / beta / 1e9) if beta > 0 else None, "gamma_identified": self.gamma_identified,
                "max_rel_error_above_64k": _json_float(self.max_rel_error(65536)),
                "rms_rel_error": _json_float(self.rms_rel_error()), "samples": len(self.sizes)}  # fmt: skip


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else x


def _broadcast(name: str, value: object, n: int) -> list:
    if isinstance(value, str) or np.ndim(value) == 0:  # one op name, or one number (numpy's included)
        return [value] * n
    values = list(value)  # type: ignore[call-overload]
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} samples; give one value or one per sample")
    return values


def nnls(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Exact non-negative least squares ``min |matrix x - target|, x >= 0`` for a few columns.

    ``matrix`` (m, k) with k <= 4, ``target`` (m,); returns x (k,). Every subset of columns is solved
    unconstrained; the best solution that is non-negative wins (the empty subset, x = 0, always is).
    """
    k = matrix.shape[1]
    best, best_residual = np.zeros(k), float(np.sum(target * target))
    for size in range(1, k + 1):
        for cols in itertools.combinations(range(k), size):
            sub = matrix[:, cols]
            x, *_ = np.linalg.lstsq(sub, target, rcond=None)
            if np.any(x < 0):
                continue
            residual = float(np.sum((sub @ x - target) ** 2))
            if residual < best_residual * (1 - 1e-12):
                best, best_residual = np.zeros(k), residual
                best[list(cols)] = x
    return best


def fit_link(
    op: str | Sequence[str],
    p: int | Sequence[int],
    sizes: Sequence[float],
    seconds: Sequence[float],
    algorithm: str = "ring",
) -> LinkFit:
    """Fit ``Link(alpha, beta, gamma) >= 0`` to timings, minimising the relative error.

    ``sizes`` (bytes, as nccl-tests counts them) and ``seconds`` (measured time of one collective): one per
    sample. ``op`` and ``p``: one value for all samples, or one per sample (a fit over several ops and world
    sizes at once). ``gamma`` is 0 when no sample reduces, or when the samples cannot separate it from ``beta``.
    """
    n = len(sizes)
    if n == 0 or len(seconds) != n:
        raise ValueError(f"sizes/seconds: {n} sizes and {len(seconds)} timings; need the same number, at least one")
    ops, ps = _broadcast("op", op, n), _broadcast("p", p, n)
    t = np.asarray(seconds, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise ValueError(f"seconds: {[float(x) for x in t if not (x > 0 and math.isfinite(x))][:3]}; "
                         "every timing must be a positive finite number")  # fmt: skip
    for q in ps:
        if int(q) < 2:
            raise ValueError(f"p: {q}; a collective needs 2 ranks or more")
    rows = np.array([coefficients(o, int(q), float(nb), algorithm) for o, q, nb in zip(ops, ps, sizes)])
    weighted = rows / t[:, None]  # rows scaled by 1/t: residuals are relative errors
    target = np.ones(n)
    norms = np.linalg.norm(weighted, axis=0)
    used = [j for j in range(3) if norms[j] > 0]
    scaled = weighted / np.where(norms > 0, norms, 1.0)  # unit columns: seconds and bytes differ by 1e9
    gamma_identified = 2 in used and np.linalg.matrix_rank(scaled[:, used], tol=1e-9) == len(used)
    if 2 in used and not gamma_identified:
        used.remove(2)
    x = np.zeros(3)
    x[used] = nnls(scaled[:, used], target) / norms[used]
    link = Link(alpha=float(x[0]), beta=float(x[1]), gamma=float(x[2]))
    predicted = rows @ x
    rel = predicted / t - 1.0
    return LinkFit(link, tuple(ops), tuple(int(q) for q in ps), tuple(float(s) for s in sizes),
                   tuple(float(s) for s in t), tuple(float(v) for v in predicted), tuple(float(v) for v in rel),
                   bool(gamma_identified))  # fmt: skip
