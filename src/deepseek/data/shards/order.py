"""The global sample order of a shard set: pure functions of (seed, epoch), no I/O.

An epoch's order is a sequence of positions ``0 .. N-1``, each naming one global sample index:

- the shards are permuted by ``(seed, epoch)``;
- consecutive groups of ``shuffle_window`` shards of that permutation have their samples permuted
  together by ``(seed, epoch, group)``; position ``p`` lies in the group whose cumulative sample range
  holds it.

Only one group's permutation exists at a time (``shuffle_window`` shards' worth of int64), never an
N-sized array, so N may be 10^9. Nothing here depends on the number of ranks or workers: they only
decide which positions a process takes (:func:`step_positions`), so the order is the same whatever
the world size, and a resume at another world size continues at a position (:func:`resume_position`).

Global step ``s`` of a world of ``W`` ranks with per-rank batch ``B`` covers the positions
``[start + s*B*W, start + (s+1)*B*W)``; rank ``r`` takes ``start + s*B*W + r + j*W`` (``j < B``) that are
below N. ``start`` is 0, or the position a resumed run continues from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.random import PCG64, Generator, SeedSequence  # eager: numpy loads it lazily, per forked worker

_SHARDS_STREAM, _GROUP_STREAM = 0, 1


def _rng(*entropy: int) -> np.random.Generator:
    """A generator seeded from non-negative ints (negative seeds fold into 64 bits)."""
    return Generator(PCG64(SeedSequence([int(e) % 2**64 for e in entropy])))


class EpochOrder:
    """Position -> global sample index for one epoch.

    ``shard_firsts`` / ``shard_samples`` (each of length S): the global index of each readable shard's
    first sample and its sample count (shards left out, e.g. skipped as corrupt, are simply absent).
    """

    def __init__(
        self,
        shard_firsts: Sequence[int],
        shard_samples: Sequence[int],
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        shuffle_window: int = 4,
    ) -> None:
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window={shuffle_window}: expected an integer >= 1")
        firsts = np.asarray(shard_firsts, dtype=np.int64)
        counts = np.asarray(shard_samples, dtype=np.int64)
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self.window = shuffle_window if shuffle else max(1, len(counts))
        perm = _rng(seed, epoch, _SHARDS_STREAM).permutation(len(counts)) if shuffle else np.arange(len(counts))
        self.shard_order = perm  # (S,) shard numbers (into shard_firsts) in epoch order
        self.firsts, self.counts = firsts[perm], counts[perm]
        self.shard_ends = np.cumsum(self.counts)  # (S,) end position of each shard in epoch order
        group_last = np.minimum(np.arange(self.window, len(counts) + self.window, self.window), len(counts)) - 1
        self.group_ends = self.shard_ends[group_last] if len(counts) else np.zeros(0, np.int64)  # (G,)
        self.samples = int(self.shard_ends[-1]) if len(counts) else 0
        self._cached: tuple[int, np.ndarray] | None = None  # the last group's permutation only

    def __len__(self) -> int:
        return self.samples

    def _group_perm(self, group: int) -> np.ndarray:
        """(group size,) offsets within the group, permuted by (seed, epoch, group)."""
        if self._cached is not None and self._cached[0] == group:
            return self._cached[1]
        start = int(self.group_ends[group - 1]) if group else 0
        size = int(self.group_ends[group]) - start
        perm = _rng(self.seed, self.epoch, _GROUP_STREAM, group).permutation(size)
        self._cached = (group, perm)
        return perm

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """(k,) positions in ``[0, N)`` -> (k,) global sample indices (int64)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.samples):
            raise IndexError(f"positions must lie in [0, {self.samples}), got {positions.min()}..{positions.max()}")
        within = positions.copy()
        if self.shuffle and positions.size:
            groups = np.searchsorted(self.group_ends, positions, side="right")
            for group in range(int(groups.min()), int(groups.max()) + 1):  # a step spans one or two groups
                mask = groups == group
                if not mask.any():
                    continue
                start = int(self.group_ends[group - 1]) if group else 0
                within[mask] = start + self._group_perm(int(group))[positions[mask] - start]
        shard = np.searchsorted(self.shard_ends, within, side="right")
        shard_start = self.shard_ends[shard] - self.counts[shard]
        return self.firsts[shard] + (within - shard_start)

    def group_of(self, position: int) -> int:
        """The group (of ``shuffle_window`` shards in epoch order) that reads ``position``."""
        return int(np.searchsorted(self.group_ends, position, side="right"))

    def group_shards(self, group: int) -> np.ndarray:
        """The shard numbers (into ``shard_firsts``) of ``group``, in epoch order."""
        return self.shard_order[group * self.window : (group + 1) * self.window]


def steps_per_epoch(samples: int, batch_size: int, world_size: int, drop_last: bool = False, start: int = 0) -> int:
    """Global steps covering positions ``[start, samples)``: the same count on every rank."""
    left, per_step = max(0, samples - start), batch_size * world_size
    return left // per_step if drop_last else math.ceil(left / per_step)


def step_positions(step: int, rank: int, world_size: int, batch_size: int, samples: int, start: int = 0) -> np.ndarray:
    """(<= batch_size,) the positions rank ``rank`` reads at global step ``step`` (fewer, even none, at the tail)."""
    first = start + step * batch_size * world_size + rank
    return np.arange(first, min(samples, first + batch_size * world_size), world_size, dtype=np.int64)


def resume_position(state: Mapping[str, Any], samples: int | None = None) -> int:
    """The epoch position a resumed run continues from.

    ``state`` is a :meth:`StreamingLoader.state_dict` plus the Trainer's ``"batches"`` (batches done this
    epoch): ``anchor_position + (batches - anchor_batches) * batch_size * world_size`` with the saving world's
    batch size and world size, clipped to ``samples`` (the epoch's length) when given.
    """
    for key in ("anchor_position", "anchor_batches", "batch_size", "world_size"):
        if key not in state:
            raise ValueError(f"streaming loader state lacks '{key}' (has {sorted(state)})")
    done = int(state.get("batches", state["anchor_batches"])) - int(state["anchor_batches"])
    if done < 0:
        raise ValueError(f"batches={state.get('batches')}: expected >= anchor_batches={state['anchor_batches']}")
    position = int(state["anchor_position"]) + done * int(state["batch_size"]) * int(state["world_size"])
    return position if samples is None else min(position, samples)
