"""The on-disk shard format: ``index.json`` (:class:`ShardIndex`) and the Arrow column encoding of samples
(:class:`SampleCodec`). Plain JSON and Arrow only: an index is data, never code.

A sample is a nested tuple/list/dict of leaves; each leaf becomes one Arrow column:

- tensor or numpy leaf of a fixed shape -> ``fixed_size_binary(nbytes)`` of its C-contiguous bytes;
  of a varying shape -> ``binary`` plus a ``<name>.shape`` column (``list<int32>``);
- python ``int`` -> int64, ``float`` -> float64, ``str`` -> string, ``bool`` -> bool.

The ``structure`` template rebuilds a sample from its leaves: ``{"col": "c0"}`` is a leaf, ``{"tuple": [...]}``,
``{"list": [...]}`` and ``{"dict": [[key, ...], ...]}`` its containers. A ``language_model`` set stores one
token column ``tokens`` (seq_len + 1,) per sample and decodes it to ``(tokens[:-1], tokens[1:])`` as int64.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

INDEX_FILE = "index.json"
SPLITS_FILE = "splits.json"
FORMAT_NAME = "deepseek-shards"
FORMAT_VERSION = 1
LANGUAGE_MODEL = "language_model"
_SCALAR_ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
_SHARD_KEYS = ("file", "samples", "first", "bytes", "sha256", "raw_bytes", "raw_sha256", "blocks")
_INDEX_KEYS = ("samples", "structure", "columns", "compression", "shards")


@dataclass
class ShardInfo:
    """One shard file: its sample range ``[first, first + samples)``, stored and raw (uncompressed Arrow)
    sizes and sha256, and its record batches as ``[first_row, byte_offset_in_raw_file]``."""

    file: str
    samples: int
    first: int
    bytes: int
    sha256: str
    raw_bytes: int
    raw_sha256: str
    blocks: list[list[int]]


@dataclass
class ShardIndex:
    """The content of ``index.json``: sample count, codec (``structure`` + ``columns``) and shards in order."""

    samples: int
    structure: Any
    columns: list[dict]
    compression: str | None
    shards: list[ShardInfo]
    source: str = ""
    preprocess: list = field(default_factory=list)
    task: str | None = None

    @classmethod
    def from_json(cls, text: str, where: str) -> ShardIndex:
        """Parse an index; a ValueError naming ``where`` (the file or URL) and the bad or missing key."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not a valid shard index (invalid JSON: {err})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: not a valid shard index (expected a JSON object, got {type(raw).__name__})")
        if raw.get("format") != FORMAT_NAME or raw.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{where}: key 'format'/'version' is {raw.get('format')!r}/{raw.get('version')!r}; "
                f"expected {FORMAT_NAME!r}/{FORMAT_VERSION}"
            )
        for key in _INDEX_KEYS:
            if key not in raw:
                raise ValueError(f"{where}: not a valid shard index (missing key '{key}')")
        shards = []
        for number, shard in enumerate(raw["shards"]):
            missing = [k for k in _SHARD_KEYS if not isinstance(shard, dict) or k not in shard]
            if missing:
                raise ValueError(f"{where}: not a valid shard index (missing key 'shards[{number}].{missing[0]}')")
            shards.append(ShardInfo(**{k: shard[k] for k in _SHARD_KEYS}))
        if sum(s.samples for s in shards) != raw["samples"]:
            raise ValueError(f"{where}: key 'samples' is {raw['samples']}, but the shards hold a different total")
        return cls(
            raw["samples"], raw["structure"], raw["columns"], raw["compression"], shards,
            raw.get("source", ""), raw.get("preprocess", []), raw.get("task"),
        )  # fmt: skip

    def to_json(self) -> str:
        """The index as JSON text (the shards one per line, so diffs and eyes can follow it)."""
        body = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **asdict(self)}
        return json.dumps(body, indent=1) + "\n"

    def locate(self, index: int) -> tuple[int, int]:
        """Global sample index -> (shard number, row within that shard)."""
        if not 0 <= index < self.samples:
            raise IndexError(f"sample {index} out of range: the shard set holds {self.samples} samples")
        number = bisect.bisect_right([s.first for s in self.shards], index) - 1
        while self.shards[number].samples == 0:  # an empty shard shares its `first` with the next one
            number += 1
        return number, index - self.shards[number].first


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def _leaf_column(name: str, leaf: Any) -> dict:
    """The column description of one leaf (its kind, dtype and shape)."""
    if isinstance(leaf, bool):
        return {"name": name, "kind": "bool", "dtype": "bool", "shape": None}
    if isinstance(leaf, int):
        return {"name": name, "kind": "int", "dtype": "int64", "shape": None}
    if isinstance(leaf, float):
        return {"name": name, "kind": "float", "dtype": "float64", "shape": None}
    if isinstance(leaf, str):
        return {"name": name, "kind": "str", "dtype": "string", "shape": None}
    tensor = _as_tensor(leaf, name)
    return {"name": name, "kind": "tensor", "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}


def _as_tensor(leaf: Any, where: str) -> torch.Tensor:
    """A tensor, numpy array or numpy scalar leaf as a contiguous CPU tensor; ValueError for anything else."""
    if isinstance(leaf, torch.Tensor):
        return leaf.detach().cpu().contiguous()
    if isinstance(leaf, np.ndarray | np.generic):
        try:
            return torch.from_numpy(np.ascontiguousarray(leaf))
        except TypeError:
            pass
    raise ValueError(
        f"sample leaf {where} is a {type(leaf).__name__}; allowed: torch tensor, numpy array, int, float, str, bool"
    )


class SampleCodec:
    """Encodes samples of one structure into Arrow record batches and decodes rows back to samples.

    Built from first samples (:meth:`from_sample` / :meth:`from_samples`: a tensor leaf whose shape differs
    among them is stored as varying) or from an index (:meth:`from_index`).
    """

    def __init__(self, structure: Any, columns: list[dict], task: str | None = None) -> None:
        self.structure, self.columns, self.task = structure, columns, task
        self._by_name = {c["name"]: c for c in columns}
        fields = []
        for col in columns:
            if col["kind"] != "tensor":
                fields.append(pa.field(col["name"], _SCALAR_ARROW[col["kind"]]))
            elif col["shape"] is None:
                fields += [pa.field(col["name"], pa.binary()), pa.field(col["name"] + ".shape", pa.list_(pa.int32()))]
            else:
                fields.append(pa.field(col["name"], pa.binary(_nbytes(col))))
        self.schema = pa.schema(fields)
        self.fixed = [c for c in columns if _fixed_width(c)]  # gathered by ColumnViews (fixed-shape, scalars)
        self._row_shapes = {c["name"]: (_nbytes(c),) if c["kind"] == "tensor" else () for c in self.fixed}

    @classmethod
    def from_sample(cls, sample: Any, task: str | None = None) -> SampleCodec:
        """The codec of samples shaped like ``sample`` (for ``language_model``: a token tensor (seq_len + 1,))."""
        return cls.from_samples([sample], task)

    @classmethod
    def from_samples(cls, samples: list, task: str | None = None) -> SampleCodec:
        """The codec of ``samples``' structure; a tensor leaf with differing shapes among them varies."""
        if task == LANGUAGE_MODEL:
            tokens = _as_tensor(samples[0], "tokens")
            if tokens.ndim != 1 or tokens.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"language_model tokens must be int32/int64 (seq_len + 1,), got {tokens.dtype}")
            column = {"name": "tokens", "kind": "tensor", "dtype": str(tokens.dtype)[6:], "shape": list(tokens.shape)}
            return cls({"col": "tokens"}, [column], task)
        columns: list[dict] = []
        structure = _template(samples[0], columns)
        for other in samples[1:]:
            for col, leaf in zip(columns, _flatten(structure, other, "sample")):
                if col["kind"] == "tensor" and col["shape"] is not None and list(_as_tensor(leaf, "").shape) != col["shape"]:
                    col["shape"] = None
        return cls(structure, columns, task)

    @classmethod
    def from_index(cls, index: ShardIndex) -> SampleCodec:
        """The codec an index describes."""
        return cls(index.structure, index.columns, index.task)

    def encode(self, samples: list) -> pa.RecordBatch:
        """``samples`` as one record batch; ValueError naming the sample and leaf that do not match."""
        leaves = [[] for _ in self.columns]
        for number, sample in enumerate(samples):
            flat = [sample] if self.task == LANGUAGE_MODEL else _flatten(self.structure, sample, f"sample {number}")
            for values, leaf in zip(leaves, flat):
                values.append(leaf)
        arrays: list[pa.Array] = []
        for col, values in zip(self.columns, leaves):
            arrays += _encode_column(col, values)
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def decode_rows(self, table: pa.Table | pa.RecordBatch, rows: np.ndarray) -> list:
        """The samples at ``rows`` of ``table``, rebuilt in their structure."""
        rows = np.asarray(rows, dtype=np.int64)
        values = {c["name"]: self._column_rows(table, c, rows) for c in self.columns}
        samples = []
        for i in range(len(rows)):
            sample = _rebuild(self.structure, {name: v[i] for name, v in values.items()})
            if self.task == LANGUAGE_MODEL:
                sample = (sample[:-1].long(), sample[1:].long())
            samples.append(sample)
        return samples

    def decode_batch(self, table: pa.Table | pa.RecordBatch, rows: np.ndarray) -> Any:
        """``default_collate(decode_rows(table, rows))`` built column-wise: each fixed-width column is gathered
        with numpy from the Arrow buffer (:class:`ColumnViews`) into one (len(rows), *shape) tensor. Empty
        ``rows`` give the same structure with a 0-length batch axis."""
        rows = np.asarray(rows, dtype=np.int64)
        arrays = self.empty_arrays(len(rows))
        ColumnViews(self, table).gather(rows, arrays)
        return self.collate_arrays(arrays, table, rows)

    def empty_arrays(self, n: int) -> dict[str, np.ndarray]:
        """Uninitialised numpy arrays for ``n`` rows of each fixed-width column: (n, nbytes) uint8 for a tensor
        column, (n,) int64 / float64 / bool for a scalar one; filled by :meth:`ColumnViews.gather`."""
        return {c["name"]: np.empty((n, *self._row_shapes[c["name"]]), _NUMPY[c["kind"]]) for c in self.fixed}

    def collate_arrays(self, arrays: dict[str, np.ndarray], table: Any = None, rows: np.ndarray | None = None) -> Any:
        """The collated batch from :meth:`empty_arrays` filled with its rows (zero copy into tensors); columns
        that are not fixed-width (varying shapes, str) are decoded from ``table`` at ``rows``."""
        batch: dict[str, Any] = {}
        for col in self.columns:
            name = col["name"]
            if name in arrays and col["kind"] == "tensor":
                batch[name] = _as_batch_tensor(arrays[name], col)
            elif name in arrays:
                batch[name] = torch.from_numpy(arrays[name])
            elif col["kind"] == "tensor":
                tensors = self._column_rows(table, col, rows)
                batch[name] = torch.stack(tensors) if tensors else torch.empty(0, dtype=_dtype(col))
            else:  # str
                batch[name] = table.column(name).take(pa.array(rows)).to_pylist()
        out = _rebuild(self.structure, batch, collated=True)
        if self.task == LANGUAGE_MODEL:
            return [out[:, :-1].long(), out[:, 1:].long()]
        return out

    def _column_rows(self, table: pa.Table | pa.RecordBatch, col: dict, rows: np.ndarray) -> list:
        """The decoded values of one column at ``rows`` (tensors or python scalars)."""
        column = table.column(col["name"])
        if col["kind"] != "tensor":
            return column.take(pa.array(rows)).to_pylist()
        if col["shape"] is not None:
            gathered = np.empty((len(rows), _nbytes(col)), np.uint8)
            ColumnViews(self, table, [col]).gather(rows, {col["name"]: gathered})
            return list(_as_batch_tensor(gathered, col).unbind(0))
        shapes = table.column(col["name"] + ".shape").take(pa.array(rows)).to_pylist()
        blobs = column.take(pa.array(rows)).to_pylist()
        dtype = _dtype(col)
        return [
            torch.from_numpy(np.frombuffer(blob, dtype=np.uint8).copy()).view(dtype).reshape(shape)
            for blob, shape in zip(blobs, shapes)
        ]


class ColumnViews:
    """Zero-copy numpy views of a table's fixed-width columns, one per record batch: (rows, nbytes) uint8 over
    a fixed-size binary column's data buffer, (rows,) over an int64/float64 column (bool, bit-packed in Arrow,
    is unpacked once). Built once when a shard is opened, so that a batch costs a numpy take per column and
    record batch, no Arrow call, no per-row Python; a memory-mapped shard stays on disk but for the rows read."""

    def __init__(self, codec: SampleCodec, table: pa.Table | pa.RecordBatch, columns: list[dict] | None = None) -> None:
        columns = codec.fixed if columns is None else columns
        self.views = {c["name"]: [_view(chunk, c) for chunk in _chunks(table.column(c["name"]))] for c in columns}
        sizes = [len(chunk) for chunk in _chunks(table.column(0))] if table.num_columns else []
        self.rows = int(table.num_rows)
        self.batch_rows = sizes  # rows of each record batch
        # per row: its record batch and its row in there (the same for every column of a table)
        self._batch_of = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)  # (rows,)
        self._row_in_batch = np.arange(self.rows) - np.repeat(np.cumsum([0, *sizes[:-1]]), sizes)  # (rows,)

    def gather(self, rows: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """``out[name][j] = column[rows[j]]`` for each column; ``rows`` (k,) int64 rows of this table, ``out``
        as :meth:`SampleCodec.empty_arrays` (k)."""
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"rows out of range: the table holds {self.rows} rows")
        batches, local = self._batch_of[rows], self._row_in_batch[rows]
        for batch in range(len(self.batch_rows)):
            picked = np.flatnonzero(batches == batch)
            for name, views in self.views.items():
                out[name][picked] = views[batch][local[picked]]


def _fixed_width(col: dict) -> bool:
    return col["kind"] in ("int", "float", "bool") or (col["kind"] == "tensor" and col["shape"] is not None)


_NUMPY = {"tensor": np.uint8, "int": np.int64, "float": np.float64, "bool": np.bool_}


def _view(chunk: pa.Array, col: dict) -> np.ndarray:
    """One record batch of a fixed-width column as numpy: (rows, nbytes) uint8 or (rows,) scalars."""
    if col["kind"] != "tensor":
        # not column.type.to_pandas_dtype(): it imports pandas (~45 MB resident) in every loader worker
        return chunk.to_numpy(zero_copy_only=False)
    nbytes = _nbytes(col)
    if nbytes == 0 or len(chunk) == 0:
        return np.empty((len(chunk), nbytes), np.uint8)
    data = chunk.buffers()[1]
    return np.frombuffer(data, np.uint8, len(chunk) * nbytes, chunk.offset * nbytes).reshape(len(chunk), nbytes)


def _as_batch_tensor(gathered: np.ndarray, col: dict) -> torch.Tensor:
    """(n, nbytes) uint8 rows of a fixed tensor column -> (n, *shape) tensor of its dtype, sharing the memory."""
    n = len(gathered)
    if n == 0 or gathered.shape[1] == 0:  # torch cannot reinterpret 0 bytes as another dtype
        return torch.empty((n, *col["shape"]), dtype=_dtype(col))
    return torch.from_numpy(gathered).view(_dtype(col)).reshape(n, *col["shape"])


def _dtype(col: dict) -> torch.dtype:
    return getattr(torch, col["dtype"])


def _nbytes(col: dict) -> int:
    return int(np.prod(col["shape"], dtype=np.int64)) * torch.empty(0, dtype=_dtype(col)).element_size()


def _template(sample: Any, columns: list[dict]) -> Any:
    """The structure template of ``sample``, appending one column description per leaf to ``columns``."""
    if isinstance(sample, dict):
        if not all(isinstance(k, str) for k in sample):
            raise ValueError(f"sample dict keys must be str, got {[type(k).__name__ for k in sample]}")
        return {"dict": [[k, _template(v, columns)] for k, v in sample.items()]}
    if isinstance(sample, tuple | list):
        return {"tuple" if isinstance(sample, tuple) else "list": [_template(v, columns) for v in sample]}
    name = f"c{len(columns)}"
    columns.append(_leaf_column(name, sample))
    return {"col": name}


def _flatten(structure: Any, sample: Any, where: str) -> list:
    """The leaves of ``sample`` in column order; ValueError if its structure differs from the template."""
    if "col" in structure:
        return [sample]
    kind, parts = next(iter(structure.items()))
    if kind == "dict":
        if not isinstance(sample, dict) or list(sample) != [k for k, _ in parts]:
            raise ValueError(f"{where}: expected a dict with keys {[k for k, _ in parts]}, got {_describe(sample)}")
        return [leaf for k, sub in parts for leaf in _flatten(sub, sample[k], f"{where}[{k!r}]")]
    expected = tuple if kind == "tuple" else list
    if not isinstance(sample, expected) or len(sample) != len(parts):
        raise ValueError(f"{where}: expected a {kind} of {len(parts)}, got {_describe(sample)}")
    return [leaf for i, sub in enumerate(parts) for leaf in _flatten(sub, sample[i], f"{where}[{i}]")]


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"a dict with keys {list(value)}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _rebuild(structure: Any, values: dict, collated: bool = False) -> Any:
    """The sample (or collated batch: tuples become lists, as ``default_collate`` does) from column values."""
    if "col" in structure:
        return values[structure["col"]]
    kind, parts = next(iter(structure.items()))
    if kind == "dict":
        return {k: _rebuild(sub, values, collated) for k, sub in parts}
    items = [_rebuild(sub, values, collated) for sub in parts]
    return tuple(items) if kind == "tuple" and not collated else items


def _encode_column(col: dict, values: list) -> list[pa.Array]:
    """The Arrow array(s) of one column: a fixed tensor column from one stacked uint8 buffer (n, nbytes)."""
    name, kind = col["name"], col["kind"]
    if kind != "tensor":
        allowed = {"bool": (bool,), "int": (int,), "float": (float,), "str": (str,)}[kind]
        for v in values:
            if not isinstance(v, allowed) or (kind == "int" and isinstance(v, bool)):
                raise ValueError(f"column {name}: expected {kind}, got {type(v).__name__} ({v!r:.40})")
        return [pa.array(values, type=_SCALAR_ARROW[kind])]
    dtype = _dtype(col)
    tensors = [_as_tensor(v, name) for v in values]
    for t in tensors:
        if t.dtype != dtype or (col["shape"] is not None and list(t.shape) != col["shape"]):
            allowed = f"{col['dtype']} of shape {col['shape']}" if col["shape"] is not None else col["dtype"]
            raise ValueError(f"column {name}: a sample's tensor is {str(t.dtype)[6:]} {list(t.shape)}; expected {allowed}")
    if col["shape"] is None:
        blobs = [t.reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors]
        return [pa.array(blobs, type=pa.binary()), pa.array([list(t.shape) for t in tensors], pa.list_(pa.int32()))]
    nbytes = _nbytes(col)
    flat = torch.stack(tensors).reshape(len(tensors), -1).view(torch.uint8) if tensors else torch.empty(0, 0)
    data = pa.py_buffer(np.ascontiguousarray(flat.numpy()))  # no copy: the buffer keeps the array alive
    return [pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), len(tensors), [None, data])]


def _chunks(column: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]
