"""Per-feature drift between a reference sample and a new one: PSI and two-sample Kolmogorov-Smirnov.

PSI bins each feature at the reference's deciles; by the usual convention PSI < 0.1 is stable,
0.1-0.25 a moderate shift and >= 0.25 a significant one. KS p-values are Bonferroni-corrected over
the features, so 64 pixels do not raise false alarms by chance. The verdict is ``drift`` when any
feature's PSI reaches ``psi_drift`` or its corrected KS p-value is below ``alpha``; ``warning`` when
a PSI reaches ``psi_warn``; else ``no drift``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def psi(reference: np.ndarray, new: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of one feature, on bins at the reference's quantiles."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    new_share = np.bincount(np.searchsorted(edges, new, side="right"), minlength=len(edges) + 1) / len(new)
    ref_share, new_share = np.clip(ref_share, eps, None), np.clip(new_share, eps, None)
    return float(np.sum((new_share - ref_share) * np.log(new_share / ref_share)))


def drift_report(
    reference: np.ndarray,
    new: np.ndarray,
    names: list[str] | None = None,
    psi_warn: float = 0.1,
    psi_drift: float = 0.25,
    alpha: float = 0.01,
) -> dict[str, Any]:
    """``{"verdict", "features": [{name, psi, ks, p_value, p_adjusted, status}], ...}`` for ``(N, F)`` arrays."""
    from scipy.stats import ks_2samp

    reference, new = np.asarray(reference, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if reference.ndim != 2 or new.ndim != 2 or reference.shape[1] != new.shape[1]:
        raise ValueError(f"need two (N, F) arrays with the same F, got {reference.shape} and {new.shape}")
    f = reference.shape[1]
    names = names or [f"f{i}" for i in range(f)]
    rows = []
    for i in range(f):
        r, n = reference[:, i], new[:, i]
        value = psi(r, n)
        ks = ks_2samp(r, n)
        p_adj = min(1.0, float(ks.pvalue) * f)
        status = "drift" if value >= psi_drift or p_adj < alpha else ("warning" if value >= psi_warn else "ok")
        rows.append(
            {
                "name": names[i],
                "psi": value,
                "ks": float(ks.statistic),
                "p_value": float(ks.pvalue),
                "p_adjusted": p_adj,
                "status": status,
            }
        )
    drifted = [r["name"] for r in rows if r["status"] == "drift"]
    warned = [r["name"] for r in rows if r["status"] == "warning"]
    verdict = "drift" if drifted else ("warning" if warned else "no drift")
    return {
        "verdict": verdict,
        "drifted_features": drifted,
        "warning_features": warned,
        "thresholds": {"psi_warn": psi_warn, "psi_drift": psi_drift, "alpha_bonferroni": alpha},
        "n_reference": int(reference.shape[0]),
        "n_new": int(new.shape[0]),
        "features": sorted(rows, key=lambda r: -r["psi"]),
    }


def load_matrix(source: str) -> tuple[np.ndarray, list[str]]:
    """An ``(N, F)`` matrix and feature names from a CSV/Parquet table (numeric columns), a ``.npy``
    array, or a registered dataset split written ``name:split`` (inputs flattened)."""
    path = Path(source)
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        import pandas as pd

        frame = pd.read_parquet(path) if path.suffix.lower() != ".csv" else pd.read_csv(path)
        numeric = frame.select_dtypes("number")
        if numeric.shape[1] == 0:
            raise ValueError(f"{source}: no numeric columns")
        return numeric.to_numpy(dtype=np.float64), [str(c) for c in numeric.columns]
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        arr = arr.reshape(len(arr), -1)
        return arr, [f"f{i}" for i in range(arr.shape[1])]
    if path.exists():
        raise ValueError(f"{source}: use a .csv, .parquet or .npy file, or a dataset split such as digits:val")
    from deepseek.data.datasets import build_dataset

    name, _, split = source.partition(":")
    splits = build_dataset(name)
    data = getattr(splits, split or "train", None)
    if data is None:
        raise ValueError(f"dataset '{name}' has no split '{split}' (use train or val)")
    first = data[0][0]
    if not hasattr(first, "reshape"):
        raise ValueError(
            f"dataset '{name}' has non-tensor inputs ({type(first).__name__}); embed them first and pass a .npy file"
        )
    rows = [np.asarray(data[i][0], dtype=np.float64).reshape(-1) for i in range(len(data))]
    arr = np.stack(rows)
    return arr, [f"x{i}" for i in range(arr.shape[1])]
