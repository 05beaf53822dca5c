"""``StreamingLoader``: one rank's batches of a shard set's global order, resumable at any world size.

    loader = StreamingLoader(open_shards("s3://b/train"), batch_size=64, rank=r, world_size=w, num_workers=4)
    for epoch in range(3):
        loader.set_epoch(epoch)
        for x, y in loader: ...

A ``torch.utils.data.DataLoader`` (``batch_size=None``) over an IterableDataset of whole batches: global step
``s`` of the epoch's order (:mod:`deepseek.data.shards.order`) gives rank ``r`` the positions
``start + s*B*W + r + j*W``; worker ``w`` of ``n`` builds steps ``w, w+n, ...``, so the DataLoader's in-order
round robin yields the rank's steps in order whatever ``n``. Every rank has ``ceil((N - start) / (B*W))``
batches (``floor`` with ``drop_last``); at the tail a rank's batch may be short or empty (a 0-length batch axis),
never padded with repeats.

Resume: ``state_dict()`` records where this pass started (``anchor_position`` at the Trainer's
``anchor_batches``) and the world that counts the batches; ``load_state_dict({..., "epoch": e, "batches": k})``
continues at ``anchor_position + (k - anchor_batches) * batch_size * world_size`` in any world.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from deepseek.data.seeded import SeededCollate
from deepseek.data.shards.order import EpochOrder, resume_position, step_positions, steps_per_epoch
from deepseek.data.shards.reader import ShardSet
from deepseek.data.transforms import Pipeline


class _EpochBatches(IterableDataset):
    """This rank's batches of one pass over the epoch's order, from position ``start``."""

    def __init__(self, shards: ShardSet, batch_size: int, rank: int, world_size: int, **order: Any) -> None:
        self.shards, self.batch_size, self.rank, self.world_size = shards, batch_size, rank, world_size
        self.seed, self.shuffle, self.window = order["seed"], order["shuffle"], order["shuffle_window"]
        self.drop_last, self.prefetch, self.collate = order["drop_last"], order["prefetch"], order["collate"]
        self.epoch, self.start = 0, 0
        readable = shards.readable
        self.firsts = [shards.index.shards[n].first for n in readable]
        self.counts = [shards.index.shards[n].samples for n in readable]
        self.samples = int(sum(self.counts))

    def steps(self) -> int:
        return steps_per_epoch(self.samples, self.batch_size, self.world_size, self.drop_last, self.start)

    def order(self) -> EpochOrder:
        return EpochOrder(
            self.firsts, self.counts, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle, shuffle_window=self.window
        )

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order, readable = self.order(), self.shards.readable
        self.shards.max_open = max(self.shards.max_open, 2 * order.window)  # a step may straddle two groups
        try:
            for step in range(worker, self.steps(), workers):
                positions = step_positions(step, self.rank, self.world_size, self.batch_size, self.samples, self.start)
                yield self._batch(order, readable, positions)
        finally:
            self.shards.keep_open([])  # unmap at the end of the pass (or when the loop is abandoned)

    def _batch(self, order: EpochOrder, readable: list[int], positions: np.ndarray) -> Any:
        """The batch at ``positions`` (this rank's share of one step); maps only the shards the order is in."""
        indices = order.indices(positions)
        if len(positions):
            group = order.group_of(int(positions[-1]))
            first = order.group_of(int(positions[0]))
            in_use = [readable[k] for g in range(first, group + 1) for k in order.group_shards(g)]
            self.shards.keep_open(in_use)  # the order has left every other shard: unmap it
            ahead = order.shard_order[(group + 1) * order.window : (group + 1) * order.window + self.prefetch]
            self.shards.storage.prefetch(readable[k] for k in ahead)
        if self.collate is None or not len(indices):
            return self.shards.read_batch(indices)  # an empty batch keeps the structure, 0-length batch axis
        samples = self.shards.read_samples(indices)
        if isinstance(self.collate, SeededCollate):
            self.collate.epoch = self.epoch
            return self.collate(list(zip(indices.tolist(), samples)))
        return self.collate(samples)


class StreamingLoader(DataLoader):
    """One rank's batches of a :class:`ShardSet`, in the global order (see the module docstring).

    ``collate_fn``: None (batches decoded column-wise, ``== default_collate`` of the samples), a
    :class:`Pipeline` (per-sample steps seeded by ``(seed, epoch, global index)`` as in
    :class:`~deepseek.data.seeded.SeededCollate`, then its batch steps), or any collate function of a
    list of samples. ``shuffle_window``: shards whose samples are shuffled together; ``prefetch``: shards
    fetched ahead of use (remote or compressed sets).
    """

    def __init__(
        self,
        shards: ShardSet,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        drop_last: bool = False,
        collate_fn: Pipeline | Callable[[list[Any]], Any] | None = None,
        shuffle_window: int = 4,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        checks = (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("prefetch", prefetch, 0),
                  ("shuffle_window", shuffle_window, 1), ("num_workers", num_workers, 0))  # fmt: skip
        for key, value, low in checks:
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{key}={value!r}: expected an integer >= {low}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
        collate = SeededCollate(collate_fn, seed) if isinstance(collate_fn, Pipeline) else collate_fn
        self.stream = _EpochBatches(
            shards, batch_size, rank, world_size, seed=seed, shuffle=shuffle, shuffle_window=shuffle_window,
            drop_last=drop_last, prefetch=prefetch, collate=collate,
        )  # fmt: skip
        self._pending: tuple[int, int] | None = None  # (position, batches) a load_state_dict resumes from
        self._anchor = (0, 0)
        super().__init__(self.stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch``'s order from its start (a pending resume of another epoch is dropped)."""
        if epoch != self.stream.epoch:
            self._pending, self._anchor = None, (0, 0)
        self.stream.epoch = epoch

    def __len__(self) -> int:
        """Batches of the next pass on this rank: the same on every rank."""
        start = self._pending[0] if self._pending else 0
        stream = self.stream
        return steps_per_epoch(stream.samples, stream.batch_size, stream.world_size, stream.drop_last, start)

    def __iter__(self) -> Iterator[Any]:
        self._anchor, self._pending = self._pending or (0, 0), None
        self.stream.start = self._anchor[0]
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        """Where this pass started and the world counting its batches (the Trainer adds ``batches``)."""
        position, batches = self._pending or self._anchor
        return {
            "format": "streaming",
            "epoch": self.stream.epoch,
            "seed": self.stream.seed,
            "world_size": self.stream.world_size,
            "batch_size": self.stream.batch_size,
            "anchor_position": position,
            "anchor_batches": batches,
            "samples": self.stream.samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue epoch ``state["epoch"]`` after its first ``state["batches"]`` batches, counted in the world
        that saved ``state`` (any world size; a state without ``"format": "streaming"`` counts in this world)."""
        epoch, batches = int(state["epoch"]), int(state.get("batches", 0))
        if state.get("format") != "streaming":  # e.g. a DistributedDataset's state: same world assumed
            state = {**self.state_dict(), "anchor_position": 0, "anchor_batches": 0, "batches": batches}
        for key in ("seed", "samples"):
            mine = getattr(self.stream, key)
            if key in state and state[key] != mine:
                warnings.warn(
                    f"resuming with {key}={mine} where the checkpoint had {state[key]}: the data order differs",
                    stacklevel=2,
                )
        self.set_epoch(epoch)
        self._pending = (resume_position({**state, "batches": batches}, self.stream.samples), batches)
