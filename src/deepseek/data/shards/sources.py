"""What ``deepseek data shard SOURCE`` can shard, as :class:`DatasetSplits` plus what the index records.

Sources: a registered dataset name (or import path) with its kwargs and the ``data.preprocess`` steps of a
config (applied here, once, per sample and seeded by the sample index); an image or WAV folder, a ``.jsonl``
file (as :func:`~deepseek.data.folders.dataset_from_path` reads them); a ``.csv``/``.parquet`` table read in
record batches with pyarrow, so a table larger than memory can be sharded; a text corpus tokenized into
language-model windows. Reading a config YAML belongs to the CLI (config sits above data); it passes the
``data`` section here as plain arguments.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from deepseek.data.datasets import DatasetSplits, build_dataset
from deepseek.data.folders import dataset_from_path, jsonl_text
from deepseek.data.sample_spec import describe_sample
from deepseek.data.seeded import sample_seed
from deepseek.data.shards.format import LANGUAGE_MODEL
from deepseek.data.tasks.text import TokenWindows, encode_bytes
from deepseek.data.transforms import Pipeline

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
TEXT_SUFFIXES = (".txt", ".jsonl")


@dataclass
class ShardSource:
    """The splits to shard and what the index records about them."""

    splits: DatasetSplits
    source: str
    preprocess: list = field(default_factory=list)
    task: str | None = None


class Preprocessed(Dataset):
    """``dataset`` with a pipeline's per-sample steps applied to each input (the first item of an ``(input,
    target)`` pair, else the whole sample), seeded by the sample index as the training loader seeds them."""

    def __init__(self, dataset: Dataset, pipeline: Pipeline, seed: int) -> None:
        self.dataset, self.pipeline, self.seed = dataset, pipeline, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample, seed = self.dataset[index], sample_seed(self.seed, 0, index)
        if isinstance(sample, tuple | list) and len(sample) == 2:
            return (self.pipeline(sample[0], seed=seed), sample[1])
        return self.pipeline(sample, seed=seed)


class TokenRows(Dataset):
    """Windows of ``seq_len + 1`` ids of one id stream, ``stride`` apart: the token rows (seq_len + 1,) int32
    that decode to the same ``(x, y)`` pairs as :class:`TokenWindows` (ids, seq_len, stride)."""

    def __init__(self, ids: torch.Tensor, seq_len: int, stride: int) -> None:
        self.windows = TokenWindows(ids, seq_len, stride)  # validates seq_len against the stream length
        self.ids = ids.to(torch.int32) if int(ids.max()) < 2**31 else ids.long()

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.windows.stride
        return self.ids[start : start + self.windows.seq_len + 1]


class ParquetRows(Dataset):
    """``(features (F,) float32, class index)`` rows of a Parquet file read one row group at a time (the last
    one cached), like :func:`deepseek.data.folders.table` but never the whole table in memory."""

    def __init__(self, path: Path, features: list[str], target: str, classes: list) -> None:
        self.path, self.features, self.target = path, features, target
        self.lookup = {c: i for i, c in enumerate(classes)}
        meta = pq.ParquetFile(path).metadata
        self.starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        self._file: pq.ParquetFile | None = None
        self._opened_in = -1  # the pid that opened _file
        self._cached: tuple[int, np.ndarray, list] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        group = int(np.searchsorted(self.starts, i, side="right") - 1)
        if self._opened_in != os.getpid():  # a forked writer process: its own file handle, not the parent's
            self._file, self._cached, self._opened_in = pq.ParquetFile(self.path), None, os.getpid()
        if self._cached is None or self._cached[0] != group:
            part = self._file.read_row_group(group, columns=[*self.features, self.target])
            x = np.stack([_floats(part.column(c)) for c in self.features], axis=1)
            self._cached = (group, x, part.column(self.target).to_pylist())
        _, x, y = self._cached
        row = i - int(self.starts[group])
        return torch.from_numpy(x[row].copy()), torch.tensor(self.lookup[y[row]], dtype=torch.long)

    def __getstate__(self) -> dict:  # an open ParquetFile does not pickle; reopened on first use
        return {**self.__dict__, "_file": None, "_cached": None, "_opened_in": -1}


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return column.to_numpy().astype(np.float32)


def table_source(path: Path, scratch: Path, target: str = "label") -> DatasetSplits:
    """A CSV/Parquet table as (features, class index) rows, streamed: one pass in record batches collects the
    class values (sorted as :func:`~deepseek.data.folders.table` sorts them); a CSV is first copied in batches
    to ``scratch/table.parquet`` so that rows can be read back by row group."""
    import pyarrow.csv as pacsv

    if path.suffix.lower() == ".csv":
        scratch.mkdir(parents=True, exist_ok=True)
        parquet = scratch / "table.parquet"
        reader = pacsv.open_csv(path)
        with pq.ParquetWriter(parquet, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
        path = parquet
    schema = pq.ParquetFile(path).schema_arrow
    if target not in schema.names:
        raise ValueError(f"{path}: no column '{target}'; columns: {', '.join(schema.names)}")
    features = [f.name for f in schema if f.name != target and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if not features:
        raise ValueError(f"{path}: features must be numeric columns; not usable: none found")
    values: set = set()
    for batch in pq.ParquetFile(path).iter_batches(columns=[target]):
        values.update(pc.unique(batch.column(0)).to_pylist())
    classes = sorted(values, key=str)
    info = {"features": features, "classes": [str(c) for c in classes]}
    return DatasetSplits(ParquetRows(path, features, target, classes), None, len(classes), (len(features),), info)


def read_corpus(path: Path, text_key: str = "text") -> str:
    """A ``.txt`` file's text, or a ``.jsonl`` file's ``text_key`` fields joined by blank lines."""
    if path.suffix.lower() == ".txt":
        return path.read_text(encoding="utf-8")
    texts = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    texts.append(str(json.loads(line)[text_key]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: not a JSON object with '{text_key}' ({exc})") from None
    return "\n\n".join(texts)


def tokenized_source(path: Path, tokenize: str, seq_len: int, stride: int | None = None) -> ShardSource:
    """A text corpus as language-model token rows: ``tokenize`` is ``bytes`` (the byte ids of
    :func:`~deepseek.data.tasks.text.encode_bytes`) or a ``tokenizer.json`` of the ``tokenizers`` library."""
    if path.suffix.lower() not in TEXT_SUFFIXES or not path.is_file():
        raise ValueError(f"SOURCE '{path}': allowed with --tokenize: an existing {' or '.join(TEXT_SUFFIXES)} file")
    text = read_corpus(path)
    if tokenize == "bytes":
        ids, vocab = encode_bytes(text), 259
    else:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(tokenize)
        ids, vocab = tokenizer.encode(text).ids, tokenizer.get_vocab_size()
    rows = TokenRows(torch.tensor(ids, dtype=torch.long), seq_len, stride or seq_len)
    info = {"vocab_size": vocab, "seq_len": seq_len, "stride": stride or seq_len, "tokenizer": tokenize}
    return ShardSource(DatasetSplits(rows, None, vocab, (seq_len,), info), str(path), [], LANGUAGE_MODEL)


def dataset_source(name: str, kwargs: dict | None = None, preprocess: list | None = None, seed: int = 0,
                   source: str | None = None) -> ShardSource:  # fmt: skip
    """A registered dataset (``data.name`` + ``data.kwargs``) with ``preprocess`` applied once per sample."""
    splits = build_dataset(name, **(kwargs or {}))
    task = LANGUAGE_MODEL if isinstance(splits.train, TokenWindows) else None
    try:  # what serving takes: the raw input, before the preprocess the shards already hold (text, not ids)
        spec = describe_sample(splits, Pipeline(preprocess, seed=seed) if preprocess else None)
        splits.info = {**(splits.info or {}), "input_spec": spec}
    except (ValueError, TypeError, IndexError):  # a sample serving cannot describe: as for an in-memory run
        pass
    if preprocess:
        per_sample, per_batch = Pipeline(preprocess, seed=seed).split()
        if per_batch is not None:
            raise ValueError(f"data.preprocess: batch-level steps {per_batch.steps} cannot be applied at shard time")
        if per_sample is not None:
            wrap = lambda d: Preprocessed(d, per_sample, seed) if d is not None else None  # noqa: E731
            splits = DatasetSplits(wrap(splits.train), wrap(splits.val), splits.num_classes, splits.input_shape,
                                   splits.info)  # fmt: skip
    return ShardSource(splits, source or name, list(preprocess or []), task)


def open_source(source: str, scratch: Path, *, tokenize: str | None = None, seq_len: int | None = None,
                stride: int | None = None) -> ShardSource:  # fmt: skip
    """SOURCE (a path or a registered dataset name) -> what to shard. ``scratch``: a directory for
    intermediate files (a CSV copied to Parquet)."""
    path = Path(source)
    if tokenize is not None:
        if seq_len is None:
            raise ValueError("--tokenize needs --seq-len")
        return tokenized_source(path, tokenize, seq_len, stride)
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return ShardSource(table_source(path, scratch), str(path))
    if path.is_file() and path.suffix.lower() == ".jsonl":
        return ShardSource(jsonl_text(str(path), val_fraction=0.0), str(path))
    if path.is_dir():
        return ShardSource(dataset_from_path(path), str(path))
    if "/" in source or path.suffix.lower() in (*TABLE_SUFFIXES, *TEXT_SUFFIXES, ".yaml", ".yml"):
        raise ValueError(f"SOURCE '{source}': no such file or directory; allowed: a config .yaml, a dataset name, "
                         "an image/WAV folder, a .csv/.parquet/.jsonl file")  # fmt: skip
    return dataset_source(source)
