"""Helpers the task datasets share: seeded splits of items that carry no class label."""

from __future__ import annotations

import torch

from deepseek.errors import ConfigError


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Sorted train and validation indices of ``range(n)``: a seeded random ``val_fraction`` for validation."""
    n_val = int(round(n * val_fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index``: a sample is the same every epoch, in every worker."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def bad_data_value(key: str, value: object, allowed: str) -> ConfigError:
    """The one-line config error for a dataset argument that does not fit the data: ``data.<key>``."""
    return ConfigError([f"data.{key}: {value!r} does not fit this dataset; allowed: {allowed}"])
