"""``DistributedDataset`` (document 003): a sharded, deterministic, resumable loader.

    dataset = DistributedDataset(train_set, batch_size=256, num_workers=8, collate_fn=pipeline)

It is a :class:`ResumableDataLoader` (so a plain ``torch.utils.data.DataLoader``) that finds its rank
and world size from ``torch.distributed`` (or torchrun's environment), and applies a
:class:`Pipeline` given as ``collate_fn`` to each sample with a seed made from ``(seed, epoch,
sample index)``: an augmented sample is the same whichever worker or rank produced it, so a run
resumed mid-epoch with workers sees exactly the samples the uninterrupted run saw. The pipeline's
batch-level steps (MixUp, CutMix) run on each collated batch, seeded from its sample indices.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset

from deepseek.data.datasets import build_dataset
from deepseek.data.folders import dataset_from_path
from deepseek.data.loader import ResumableDataLoader
from deepseek.data.seeded import SeededCollate, batch_seed, sample_seed
from deepseek.data.transforms import Pipeline

# SeededCollate and the seeds live in deepseek.data.seeded (the streaming loader uses them too); kept importable here.
__all__ = ["DistributedDataset", "SeededCollate", "batch_seed", "dataset_from_path", "is_shard_source", "sample_seed",
           "streaming_loader"]


class _Indexed(Dataset):
    """Yields ``(index, sample)`` so the collate step can seed each sample by its index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


def is_shard_source(source: Any) -> bool:
    """Whether ``source`` names a shard set written by ``deepseek data shard``: an fsspec URL, or a local
    directory holding ``index.json`` (one shard set) or ``splits.json`` (train/val shard sets)."""
    if isinstance(source, str) and "://" in source:
        return True
    if not isinstance(source, (str, Path)):
        return False
    where = Path(source)
    return where.is_dir() and ((where / "index.json").is_file() or (where / "splits.json").is_file())


def streaming_loader(
    source: str | Path,
    batch_size: int = 256,
    num_workers: int | None = None,
    collate_fn: Pipeline | Callable[[list[Any]], Any] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    *,
    split: str = "train",
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool = False,
    streaming: dict[str, Any] | None = None,
    pad: bool = True,
) -> Any:
    """A :class:`~deepseek.data.shards.stream.StreamingLoader` over ``split`` of the shard set at ``source``
    (directory or URL). ``streaming``: ``cache_dir``, ``cache_limit``, ``shuffle_window``, ``prefetch``,
    ``on_corrupt`` (see ``data.streaming``). ``pad`` does not apply: a streaming epoch is never padded (a
    rank's last batch may be short, even empty, never a repeated sample)."""
    from deepseek.data.shards.reader import open_shard_splits
    from deepseek.data.shards.stream import StreamingLoader

    options = dict(streaming or {})
    loader_options = {k: options.pop(k) for k in ("shuffle_window", "prefetch") if k in options}
    chosen = getattr(open_shard_splits(source, **options), split, None)
    if chosen is None:
        raise ValueError(f"shard set '{source}' has no '{split}' split")
    env_rank, env_world = _world()
    return StreamingLoader(
        chosen,
        batch_size,
        shuffle=shuffle,
        seed=seed,
        rank=env_rank if rank is None else rank,
        world_size=env_world if world_size is None else world_size,
        num_workers=min(8, os.cpu_count() or 1) if num_workers is None else num_workers,
        drop_last=drop_last,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        **loader_options,
    )


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class DistributedDataset(ResumableDataLoader):
    """Shards ``path_or_dataset`` across ranks (each sample once per epoch over all ranks, padded to
    equal shard sizes), shuffles per epoch from ``seed``, and resumes mid-epoch via ``load_state_dict``.

    ``path_or_dataset``: a ``torch`` Dataset, a path (see :func:`dataset_from_path`), or a registered
    dataset name (its ``split``, ``train`` or ``val``). ``collate_fn``: a :class:`Pipeline` (its per-sample
    steps seeded per sample, then ``default_collate``, then its batch-level steps such as MixUp seeded per
    batch) or any collate function. ``num_workers`` defaults to ``min(8, cpu count)``.

    A shard directory or URL written by ``deepseek data shard`` (see :func:`is_shard_source`) gives a
    :class:`~deepseek.data.shards.stream.StreamingLoader` instead (see :func:`streaming_loader`; its keyword
    ``streaming`` holds the cache and shuffle settings): the same loader protocol, a global order that does
    not depend on the world size, and a resume that keeps its position at another world size.
    """

    def __new__(cls, path_or_dataset: Dataset | str | None = None, *args: Any, **kwargs: Any) -> Any:
        if is_shard_source(path_or_dataset):
            return streaming_loader(path_or_dataset, *args, **kwargs)  # not a cls: __init__ is not called
        return super().__new__(cls)  # (no arguments: copy and pickle call __new__ bare)

    def __init__(
        self,
        path_or_dataset: Dataset | str,
        batch_size: int = 256,
        num_workers: int | None = None,
        collate_fn: Pipeline | Callable[[list[Any]], Any] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        *,
        split: str = "train",
        drop_last: bool = False,
        pad: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        pin_memory: bool = False,
        streaming: dict[str, Any] | None = None,
    ) -> None:
        if streaming:
            raise ValueError(f"streaming options {sorted(streaming)} apply to a shard set only (a directory or URL "
                             "written by `deepseek data shard`), not to an in-memory dataset")  # fmt: skip
        dataset = self._resolve(path_or_dataset, split)
        env_rank, env_world = _world()
        rank = env_rank if rank is None else rank
        world_size = env_world if world_size is None else world_size
        self.pipeline = collate_fn if isinstance(collate_fn, Pipeline) else None
        collate = SeededCollate(self.pipeline, seed) if self.pipeline is not None else collate_fn
        super().__init__(
            _Indexed(dataset) if self.pipeline is not None else dataset,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            rank=rank,
            world_size=world_size,
            pad=pad,
            num_workers=min(8, os.cpu_count() or 1) if num_workers is None else num_workers,
            drop_last=drop_last,
            collate_fn=collate,
            pin_memory=pin_memory,
        )
        self.world = (rank, world_size)

    @staticmethod
    def _resolve(source: Dataset | str | Path, split: str) -> Dataset:
        if isinstance(source, Dataset):
            return source
        if isinstance(source, (str, Path)) and Path(source).exists():
            splits = dataset_from_path(Path(source))
            return splits.train if split == "train" else splits.val
        if isinstance(source, str):
            splits = build_dataset(source)
            chosen = getattr(splits, split, None)
            if chosen is None:
                raise ValueError(f"dataset '{source}' has no '{split}' split")
            return chosen
        raise TypeError(
            f"DistributedDataset needs a torch Dataset or a registered dataset name, got {type(source).__name__}"
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if isinstance(self.collate_fn, SeededCollate):
            self.collate_fn.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        """What must match on resume besides the position (the Trainer records the position itself)."""
        return {
            "epoch": self.sampler.epoch,
            "seed": self.seed,
            "world_size": self.world[1],
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, mine in (("seed", self.seed), ("world_size", self.world[1]), ("batch_size", self.batch_size)):
            if key in state and state[key] != mine:
                warnings.warn(
                    f"resuming with {key}={mine} where the checkpoint had {state[key]}: the data order will differ",
                    stacklevel=2,
                )
        super().load_state_dict(state)
        self.set_epoch(int(state["epoch"]))
