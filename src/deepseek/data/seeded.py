"""Per-sample seeds (document 003): an augmentation is seeded by ``(seed, epoch, sample index)``, so an
augmented sample is the same whichever worker, rank or loader produced it. Used by
:class:`~deepseek.data.distributed.DistributedDataset` and the streaming loader of
:mod:`deepseek.data.shards` alike (kept apart from both so that neither imports the other for it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import default_collate

from deepseek.data.transforms import Pipeline

_MIX = 1_000_003


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: independent of worker and rank."""
    return (seed * _MIX * _MIX + epoch * _MIX + index) % (2**63)


class SeededCollate:
    """Apply ``pipeline``'s per-sample steps to each sample's input (the first item of an ``(input,
    target)`` pair, else the whole sample) with its :func:`sample_seed`, then ``collate``, then its
    batch-level steps (MixUp, CutMix: they mix samples, so they need the whole batch) to the collated
    batch with :func:`batch_seed`. Picklable for workers."""

    def __init__(self, pipeline: Pipeline, seed: int, collate: Callable[[list[Any]], Any] = default_collate) -> None:
        self.pipeline, self.seed, self.collate, self.epoch = pipeline, seed, collate, 0
        self.per_sample, self.per_batch = pipeline.split()

    def __call__(self, items: list[tuple[int, Any]]) -> Any:
        out = []
        for index, sample in items:
            s = sample_seed(self.seed, self.epoch, index)
            if self.per_sample is None:
                out.append(sample)
            elif isinstance(sample, (tuple, list)) and len(sample) == 2:
                out.append((self.per_sample(sample[0], seed=s), sample[1]))
            else:
                out.append(self.per_sample(sample, seed=s))
        batch = self.collate(out)
        if self.per_batch is not None:
            batch = self.per_batch(batch, seed=batch_seed(self.seed, self.epoch, [i for i, _ in items]))
        return batch


def batch_seed(seed: int, epoch: int, indices: list[int]) -> int:
    """The seed of a batch-level step: from the batch's sample indices, so independent of worker and
    rank, and distinct from every per-sample seed of the epoch (offset by a large odd constant)."""
    return (sample_seed(seed, epoch, indices[0]) + 0x9E3779B97F4A7C15 + len(indices)) % (2**63)
