"""A sharded, seeded, resumable loader: a plain ``torch.utils.data.DataLoader`` with two additions.

Why not ``DistributedSampler``: resuming in the middle of an epoch needs the sampler to start at a
given position without reading the skipped samples, and ``DistributedSampler`` cannot. Why not
``torchdata``'s StatefulDataLoader: it is an extra dependency for what is ~60 lines here.

The Trainer's protocol for any train loader (duck-typed):
- ``set_epoch(epoch)``, called before each epoch (reshuffles);
- ``load_state_dict({"epoch": e, "batches": k})``: the next iteration of epoch ``e`` starts after
  its first ``k`` batches. Loaders without it are fast-forwarded by discarding ``k`` batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ShardedSampler(Sampler[int]):
    """Indices of one rank's shard of a per-epoch permutation.

    Each epoch draws a permutation of ``range(n)`` from ``(seed, epoch)`` (identity when not
    shuffling). With ``pad`` the permutation is padded by wrapping around to a multiple of
    ``world_size`` so every rank gets the same count (training under DDP needs equal step counts);
    rank ``r`` takes positions ``r, r + world_size, ...``. Hence the union over ranks of each rank's
    ``s``-th batch of size ``b`` is exactly the ``s``-th batch of size ``b * world_size`` of a single
    process with the same seed.
    """

    def __init__(
        self, n: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch = 0
        self.skip = 0  # samples of this rank's shard to skip once, on the next iteration

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    def shard(self) -> torch.Tensor:
        """This rank's indices for the current epoch."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        if self.pad and self.world_size > 1 and self.n % self.world_size:
            total = math.ceil(self.n / self.world_size) * self.world_size
            order = torch.cat([order, order[: total - self.n]])
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        start, self.skip = self.skip, 0
        return iter(self.shard()[start:].tolist())

    def __len__(self) -> int:
        full = math.ceil(self.n / self.world_size) if self.pad else len(range(self.rank, self.n, self.world_size))
        return max(0, full - self.skip)


class ResumableDataLoader(DataLoader):
    """``DataLoader`` over a :class:`ShardedSampler`, with ``set_epoch`` and ``load_state_dict``.

    Worker seeds come from a generator re-seeded from ``(seed, epoch)`` at each iteration, so they
    never draw from (and shift) the global RNG that the model's dropout uses.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
    ) -> None:
        sampler = ShardedSampler(len(dataset), shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, pad=pad)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            generator=torch.Generator(),
        )
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Start the next iteration of epoch ``state['epoch']`` after ``state['batches']`` batches."""
        self.sampler.set_epoch(int(state["epoch"]))
        self.sampler.skip = int(state["batches"]) * self.batch_size

    def __iter__(self) -> Any:
        self.generator.manual_seed(self.seed * 1_000_003 + self.sampler.epoch)
        return super().__iter__()
