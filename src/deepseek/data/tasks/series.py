"""Time-series forecasting on the Mackey-Glass delay equation, the classic chaotic benchmark for sequence
models (Mackey & Glass 1977): ``dx/dt = 0.2 x(t - tau) / (1 + x(t - tau)^10) - 0.1 x(t)``.

Generated here (no download), reproducible from ``seed`` (which perturbs the initial history), one
value per time unit. Training windows come from the first part of the series and validation windows
from the rest: validation never sees the future of a training window.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from annotated_types import Gt
from torch.utils.data import Dataset

from deepseek.data.datasets import DatasetSplits, Fraction
from deepseek.data.tasks.common import bad_data_value
from deepseek.registry import register_dataset


def mackey_glass_series(length: int, tau: int = 17, seed: int = 0, substeps: int = 10, warmup: int = 500) -> np.ndarray:
    """``(length,)`` float64 samples one time unit apart (Euler with ``substeps`` steps per unit), after
    ``warmup`` units of transient; the initial history is 1.2 plus seeded noise of 0.01."""
    rng = np.random.default_rng(seed)
    dt = 1.0 / substeps
    delay = tau * substeps
    total = (length + warmup) * substeps
    x = np.empty(total + delay)
    x[:delay] = 1.2 + 0.01 * rng.standard_normal(delay)
    for t in range(delay, total + delay):
        past = x[t - delay]
        x[t] = x[t - 1] + dt * (0.2 * past / (1.0 + past**10) - 0.1 * x[t - 1])
    return x[delay + warmup * substeps :: substeps][:length]


class ForecastWindows(Dataset):
    """``(past (1, window) float32, next values (horizon,) float32)`` at every start of a series (T,)."""

    def __init__(self, series: torch.Tensor, window: int, horizon: int) -> None:
        if len(series) < window + horizon:
            raise bad_data_value("window", window, f"window + horizon up to {len(series)}, the steps of this split")
        self.series, self.window, self.horizon = series, window, horizon

    def __len__(self) -> int:
        return len(self.series) - self.window - self.horizon + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = i + self.window
        return self.series[i:end].unsqueeze(0), self.series[end : end + self.horizon]


@register_dataset("mackey_glass")
def mackey_glass(
    length: Annotated[int, Gt(0)] = 5000,
    window: Annotated[int, Gt(0)] = 64,
    horizon: Annotated[int, Gt(0)] = 1,
    tau: Annotated[int, Gt(0)] = 17,
    val_fraction: Fraction = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """Forecast the chaotic Mackey-Glass series: ``(past (1, window), next values (horizon,))`` float32.

    Values are standardised with the training part's mean and std; the last ``val_fraction`` of the
    series is for validation.
    """
    raw = torch.tensor(mackey_glass_series(length, tau, seed), dtype=torch.float32)
    cut = length - int(round(length * val_fraction))
    train_part = raw[:cut]
    series = (raw - train_part.mean()) / train_part.std()
    val = ForecastWindows(series[cut:], window, horizon) if cut < length else None
    return DatasetSplits(
        ForecastWindows(series[:cut], window, horizon),
        val,
        None,
        (1, window),
        {"source": "generated", "task": "forecasting", "horizon": horizon, "mean": float(train_part.mean()),
         "std": float(train_part.std())},  # fmt: skip
    )
