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
from torch.utils.data import Dataset, default_collate

from deepseek.data.datasets import DatasetSplits, build_dataset
from deepseek.data.loader import ResumableDataLoader
from deepseek.data.transforms import Pipeline

_MIX = 1_000_003


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: independent of worker and rank."""
    return (seed * _MIX * _MIX + epoch * _MIX + index) % (2**63)


class _Indexed(Dataset):
    """Yields ``(index, sample)`` so the collate step can seed each sample by its index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


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


def dataset_from_path(path: Path) -> DatasetSplits:
    """The generic loader for what ``path`` holds: ``<class>/`` folders of images or WAVs, a ``.jsonl``
    file (``text``/``label``), or a ``.csv``/``.parquet`` table with a ``label`` column; all data in ``train``."""
    from deepseek.data.folders import IMAGE_SUFFIXES, image_folder, jsonl_text, table, wav_folder

    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".jsonl":
        return jsonl_text(str(path), val_fraction=0.0)
    if path.is_file() and suffix in (".csv", ".parquet", ".pq"):
        return table(str(path), target="label", val_fraction=0.0)
    if path.is_dir():
        kinds = {f.suffix.lower() for f in path.glob("*/*") if f.is_file()}
        if kinds & IMAGE_SUFFIXES:
            return image_folder(str(path), val_fraction=0.0)
        if ".wav" in kinds:
            return wav_folder(str(path), val_fraction=0.0)
    raise ValueError(
        f"'{path}': expected <class>/ folders of images or .wav files, a .jsonl file, or a .csv/.parquet table"
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
    """

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
    ) -> None:
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
