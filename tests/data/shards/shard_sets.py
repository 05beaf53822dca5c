"""Small shard sets for the reading tests: ``(x, y)`` samples whose ``y`` is the global index."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset


def tiny_dataset(n: int, features: int = 3) -> TensorDataset:
    """``n`` samples ``(x, y)``: x (features,) float32 = index + 0.5 (so a sample names itself), y = index."""
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, features) + 0.5
    return TensorDataset(x, torch.arange(n))


def write_set(out: Path, n: int, per_shard: int, compression: str | None = None, features: int = 3) -> Path:
    """``tiny_dataset(n)`` as a shard set of ``per_shard`` samples per shard in ``out``."""
    from deepseek.data.shards.writer import write_shards

    row_bytes = 4 * features + 8  # x float32 (features,) + y int64: the writer sizes shards by encoded bytes
    index = write_shards(tiny_dataset(n, features), out, shard_size=per_shard * row_bytes, compression=compression)
    assert [s.samples for s in index.shards][:-1] == [per_shard] * (len(index.shards) - 1)
    return out


def labels(batch: object) -> list[int]:
    """The global indices of a collated ``(x, y)`` batch."""
    return batch[1].tolist()  # type: ignore[index]
