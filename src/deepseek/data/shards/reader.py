"""Shard sets as datasets: :func:`open_shards` gives a map-style :class:`ShardSet`, :func:`open_shard_splits`
its train/val :class:`DatasetSplits`.

    train = open_shards("s3://bucket/mnist/train", cache_limit=2 * 2**30)
    x, y = train[0]
    batch = train.read_batch([5, 17, 3])   # == default_collate([train[5], train[17], train[3]])
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from deepseek.data.datasets import DatasetSplits
from deepseek.data.shards.format import SPLITS_FILE, ColumnViews, SampleCodec, ShardIndex
from deepseek.data.shards.storage import CorruptShardError, ShardStorage, read_text


class ShardSet(Dataset):
    """A shard set as a map-style dataset: ``len``, ``self[i]`` = decoded sample ``i`` (global index),
    :meth:`read_batch` for many at once. At most ``max_open`` shards stay mapped (least recently used first
    out); a skipped corrupt shard's samples raise :class:`CorruptShardError`."""

    def __init__(self, storage: ShardStorage, max_open: int = 2) -> None:
        self.storage, self.max_open = storage, max_open
        self.index: ShardIndex = storage.index
        self.codec = SampleCodec.from_index(self.index)
        self.readable = list(storage.readable)  # shard numbers the order may use
        self._firsts = np.array([s.first for s in self.index.shards], dtype=np.int64)
        # every record batch ("block") of the set: its first global index, shard and number in the shard
        blocks = [(s.first + row, n, b) for n, s in enumerate(self.index.shards) for b, (row, _) in enumerate(s.blocks)]
        self._block_firsts, self._block_shard, self._block_number = (
            np.array([b[k] for b in blocks], dtype=np.int64) for k in range(3)
        )  # (blocks,) each
        self._tables: OrderedDict[int, tuple[pa.Table, ColumnViews]] = OrderedDict()  # open shards, LRU last

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tables": OrderedDict()}  # maps are per process

    def __len__(self) -> int:
        return self.index.samples

    @property
    def readable_samples(self) -> int:
        """Samples in the shards that are present and intact (all of them unless some were skipped)."""
        return sum(self.index.shards[n].samples for n in self.readable)

    def _table(self, number: int) -> pa.Table:
        return self._open(number)[0]

    def _open(self, number: int) -> tuple[pa.Table, ColumnViews]:
        """Shard ``number``'s table and its column views, made once per opening (not per batch)."""
        if number in self._tables:
            self._tables.move_to_end(number)
            return self._tables[number]
        if number not in self.readable:
            shard = self.index.shards[number]
            raise CorruptShardError(f"shard '{shard.file}' of '{self.storage.url}' was skipped as unreadable")
        table = self.storage.open_table(number)
        views = ColumnViews(self.codec, table)
        shard = self.index.shards[number]
        if [row for row, _ in shard.blocks] != np.cumsum([0, *views.batch_rows[:-1]]).tolist()[: len(views.batch_rows)]:
            self.storage.release(number)
            raise CorruptShardError(f"shard '{shard.file}' of '{self.storage.url}': its record batches of "
                                    f"{views.batch_rows} rows differ from the index's blocks {shard.blocks}")  # fmt: skip
        self._tables[number] = opened = (table, views)
        while len(self._tables) > max(self.max_open, 1):
            self._close(next(iter(self._tables)))
        return opened

    def _close(self, number: int) -> None:
        del self._tables[number]  # the table's buffers go first, then the map
        self.storage.release(number)

    def keep_open(self, numbers: Sequence[int]) -> None:
        """Close every mapped shard not in ``numbers`` (the order has left them)."""
        for number in [n for n in self._tables if n not in set(numbers)]:
            self._close(number)

    def close(self) -> None:
        """Unmap every shard and stop the storage's prefetch thread."""
        self.keep_open([])
        self.storage.close()

    def _shard_rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if indices.size and (indices.min() < 0 or indices.max() >= self.index.samples):
            raise IndexError(f"sample index out of range: the shard set holds {self.index.samples} samples")
        shards = np.searchsorted(self._firsts, indices, side="right") - 1
        # an empty shard shares its `first` with the next one; searchsorted(right) already picks the last of them
        return shards, indices - self._firsts[shards]

    def __getitem__(self, index: int) -> Any:
        shards, rows = self._shard_rows(np.array([int(index)], dtype=np.int64))
        return self.codec.decode_rows(self._table(int(shards[0])), rows)[0]

    def read_batch(self, indices: Sequence[int] | np.ndarray) -> Any:
        """``default_collate`` of the samples at ``indices`` (global), decoded column-wise one shard at a time;
        no indices give the same structure with a 0-length batch axis."""
        indices = np.asarray(indices, dtype=np.int64)
        if not indices.size:
            first = self.readable[0] if self.readable else 0
            return self.codec.decode_batch(self._table(first), indices)
        if len(self.codec.fixed) == len(self.codec.columns):  # fixed-width columns only
            return self.codec.collate_arrays(self._gather_blocks(indices))
        shards, rows = self._shard_rows(indices)
        parts, placed = [], []
        for number, mine in _by_shard(shards):
            parts.append(self.codec.decode_batch(self._table(int(number)), rows[mine]))
            placed.append(mine)
        if len(parts) == 1:
            return parts[0] if np.array_equal(placed[0], np.arange(len(indices))) else _take(parts[0], placed[0])
        where = np.concatenate(placed)  # concatenated row k came from batch slot where[k]
        return _take(_concat(parts), np.argsort(where, kind="stable"))

    def _gather_blocks(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The fixed-width columns at ``indices`` (k,) as :meth:`SampleCodec.empty_arrays`: the indices sorted
        by record batch, one ``np.take`` per column and record batch into consecutive rows, then one
        reordering take per column, so a batch costs a few numpy calls per record batch it reads."""
        if indices.min() < 0 or indices.max() >= self.index.samples:
            raise IndexError(f"sample index out of range: the shard set holds {self.index.samples} samples")
        blocks = np.searchsorted(self._block_firsts, indices, side="right") - 1  # an empty block: the next one
        order = np.argsort(blocks, kind="stable")  # ascending blocks, so ascending shards: one opened at a time
        blocks, local = blocks[order], (indices - self._block_firsts[blocks])[order]
        bounds = [0, *(np.flatnonzero(blocks[1:] != blocks[:-1]) + 1).tolist(), len(indices)]
        grouped = self.codec.empty_arrays(len(indices))
        for start, end in zip(bounds[:-1], bounds[1:]):
            block = blocks[start]
            views = self._open(int(self._block_shard[block]))[1].views
            number = self._block_number[block]
            for name, out in grouped.items():
                np.take(views[name][number], local[start:end], axis=0, out=out[start:end])
        if np.array_equal(order, np.arange(len(order))):
            return grouped
        slot = np.empty_like(order)
        slot[order] = np.arange(len(order))  # grouped row slot[j] holds batch slot j
        return {name: np.take(out, slot, axis=0) for name, out in grouped.items()}

    def read_samples(self, indices: Sequence[int] | np.ndarray) -> list:
        """The decoded samples at ``indices`` (global), in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        shards, rows = self._shard_rows(indices)
        out: list = [None] * len(indices)
        for number, mine in _by_shard(shards):
            for slot, sample in zip(mine, self.codec.decode_rows(self._table(int(number)), rows[mine])):
                out[slot] = sample
        return out


def _by_shard(shards: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(shard number, batch slots reading it)`` in ascending shard order (one shard opened at a time);
    ``shards`` (k,) the shard of each slot. Sorting, not ``np.unique``: that imports numpy.ma lazily, again
    in every new DataLoader worker."""
    if not len(shards):
        return []
    slots = np.argsort(shards, kind="stable")
    ordered = shards[slots]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return [(int(ordered[part[0]]), slots[part]) for part in np.split(np.arange(len(slots)), cuts)]


def _concat(parts: list) -> Any:
    """Collated batches (same structure) joined along the batch axis."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, list) and first and not isinstance(first[0], (str, bytes)) and _is_structure(first):
        return [_concat([p[i] for p in parts]) for i in range(len(first))]
    return [x for p in parts for x in p]  # a collated list of str


def _is_structure(value: list) -> bool:
    return all(isinstance(v, (torch.Tensor, dict, list)) for v in value)


def _take(batch: Any, order: np.ndarray) -> Any:
    """``batch`` with its batch axis permuted: row k of the result is row ``order[k]``."""
    if isinstance(batch, torch.Tensor):
        return batch[torch.from_numpy(order)]
    if isinstance(batch, dict):
        return {k: _take(v, order) for k, v in batch.items()}
    if isinstance(batch, list) and batch and _is_structure(batch):
        return [_take(v, order) for v in batch]
    return [batch[i] for i in order]


def open_shards(
    url_or_path: str | Path,
    *,
    cache_dir: str | Path | None = None,
    cache_limit: int | None = None,
    on_corrupt: str = "error",
    storage_options: dict | None = None,
) -> ShardSet:
    """The shard set at a local directory or fsspec URL (see :mod:`deepseek.data.shards.storage`)."""
    storage = ShardStorage(
        url_or_path,
        cache_dir=cache_dir,
        cache_limit=cache_limit,
        on_corrupt=on_corrupt,
        storage_options=storage_options,
    )
    return ShardSet(storage)


def open_shard_splits(url_or_path: str | Path, **options: Any) -> DatasetSplits:
    """``DIR/train`` and ``DIR/val`` with ``DIR/splits.json``, or a single shard set as the train split.
    ``options``: those of :func:`open_shards` (a given ``cache_dir`` gets one subdirectory per split)."""
    url = str(url_or_path).rstrip("/")
    try:
        meta = json.loads(read_text(url, SPLITS_FILE, options.get("storage_options")))
    except FileNotFoundError:
        train = open_shards(url, **options)
        return DatasetSplits(train, None, None, _input_shape(train.index), {"source": train.index.source})
    if not isinstance(meta, dict) or not isinstance(meta.get("splits"), list):
        raise ValueError(f"{url}/{SPLITS_FILE}: key 'splits' must be a list of split names, got {meta!r:.80}")

    def split(name: str) -> ShardSet | None:
        if name not in meta["splits"]:
            return None
        cache = options.get("cache_dir")
        return open_shards(f"{url}/{name}", **{**options, "cache_dir": Path(cache) / name if cache else None})

    shape = meta.get("input_shape")
    return DatasetSplits(
        split("train"), split("val"), meta.get("num_classes"), tuple(shape) if shape else None, meta.get("info") or {}
    )


def _input_shape(index: ShardIndex) -> tuple[int, ...] | None:
    """The first tensor column's fixed shape (the model input of an ``(x, y)`` set), else None."""
    for col in index.columns:
        if col["kind"] == "tensor" and col["shape"] is not None:
            return tuple(col["shape"])
    return None
