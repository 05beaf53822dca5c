"""Write a map-style dataset as a shard set (see :mod:`deepseek.data.shards.format`), in parallel and resumable.

Shard ``k`` holds the fixed sample range ``[k * per_shard, (k + 1) * per_shard)``, so shards are independent
tasks and their bytes do not depend on the number of worker processes. Crash safety: ``plan.json`` first; each
shard is written to a temporary name and renamed, then its sidecar ``shard-XXXXX.json`` (its ShardInfo) is
written atomically; a rerun with the same plan keeps every shard whose sidecar exists and whose sha256 matches,
and redoes the rest; ``index.json`` comes last, so its presence marks a complete set.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch.utils.data import Dataset

from deepseek.data.datasets import DatasetSplits
from deepseek.data.shards.format import (
    INDEX_FILE,
    LANGUAGE_MODEL,
    SPLITS_FILE,
    SampleCodec,
    ShardIndex,
    ShardInfo,
    sha256_file,
)

PLAN_FILE = "plan.json"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PROBE_SAMPLES = 16  # the first samples: they fix the structure (a shape varying among them) and the bytes per sample
BLOCK_BYTES = 1 << 20  # default record-batch size: small enough that a reader decodes a block without a big copy
COMPRESSIONS = (None, "zstd")


class ShardPlanError(ValueError):
    """The output directory holds something other than this plan's shards (one line, suggests --overwrite)."""


@dataclass
class _Job:
    """What a worker needs to write shard ``k``: the dataset (inherited through fork, never pickled) and the plan."""

    dataset: Dataset
    codec: SampleCodec
    out_dir: Path
    per_shard: int
    block_rows: int
    compression: str | None
    parent_pid: int = field(default_factory=os.getpid)  # the writing process, whose death ends the workers

    @property
    def header_bytes(self) -> int:
        """Bytes before the first record batch of an Arrow IPC file: magic (8, padded) + the schema message."""
        return 8 + self.codec.schema.serialize().size

    def shard_name(self, k: int) -> str:
        return f"shard-{k:05d}.arrow" + (".zst" if self.compression == "zstd" else "")


class _HashingSink:
    """A write-only file object that counts and hashes what goes through it, then passes it on to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.sha, self.size, self.closed = inner, hashlib.sha256(), 0, False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        self.inner.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


def as_tokens(sample: Any) -> torch.Tensor:
    """A language-model sample as its token tensor (seq_len + 1,): a tensor as is, or an ``(x, y)`` window pair
    of :class:`~deepseek.data.tasks.text.TokenWindows` joined back (``y`` is ``x`` moved on by one token)."""
    if isinstance(sample, torch.Tensor):
        return sample
    x, y = sample
    if x.shape != y.shape or x.ndim != 1 or not torch.equal(x[1:], y[:-1]):
        raise ValueError("language_model samples must be token tensors or (x, y) pairs with y = x moved on by one")
    return torch.cat([x, y[-1:]])


def _write_shard(job: _Job, k: int, total: int) -> ShardInfo:
    """Write shard ``k`` (temp name, fsync, rename), then its sidecar; returns its ShardInfo."""
    first = k * job.per_shard
    count = min(job.per_shard, total - first)
    name = job.shard_name(k)
    tmp = job.out_dir / f".{name}.tmp-{os.getpid()}"
    blocks: list[list[int]] = []
    with open(tmp, "wb") as f:
        stored = _HashingSink(f)
        compressed = pa.CompressedOutputStream(pa.PythonFile(stored, mode="w"), "zstd") if job.compression else None
        raw = _HashingSink(compressed) if compressed is not None else stored  # the Arrow bytes before zstd
        raw_file = pa.PythonFile(raw, mode="w")
        with pa.ipc.new_file(raw_file, job.codec.schema) as writer:
            for start in range(first, first + count, job.block_rows):
                stop = min(start + job.block_rows, first + count)
                samples = [job.dataset[i] for i in range(start, stop)]
                if job.codec.task == LANGUAGE_MODEL:
                    samples = [as_tokens(s) for s in samples]
                # the writer puts the magic and schema down lazily, with the first batch: count them in
                blocks.append([start - first, raw.tell() or job.header_bytes])
                try:
                    batch = job.codec.encode(samples)
                except ValueError as exc:  # the first samples fixed the structure and the fixed shapes
                    raise ValueError(f"samples {start}..{stop - 1}: {exc} (as the first {PROBE_SAMPLES} samples)") from None
                writer.write_batch(batch)
        if compressed is not None:
            compressed.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, job.out_dir / name)
    info = ShardInfo(name, count, first, stored.size, stored.sha.hexdigest(), raw.size, raw.sha.hexdigest(), blocks)
    _write_atomic(job.out_dir / _sidecar(name), json.dumps(asdict(info)))
    return info


def _sidecar(shard_file: str) -> str:
    return shard_file.split(".")[0] + ".json"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


_JOB: _Job | None = None  # set in each forked worker by _init_worker


def _init_worker(job: _Job) -> None:
    global _JOB
    _JOB = job
    _die_with_parent(job.parent_pid)
    torch.set_num_threads(1)  # the workers are the parallelism; torch's own threads would oversubscribe


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this worker when the writing process dies (a kill -9 of it alone leaves no orphans
    writing on); a no-op where prctl is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_write(k: int, total: int) -> ShardInfo:
    assert _JOB is not None
    return _write_shard(_JOB, k, total)


def _kept(job: _Job, k: int, total: int) -> ShardInfo | None:
    """Shard ``k``'s ShardInfo if its sidecar and file exist, match the plan and the file's sha256 matches."""
    name = job.shard_name(k)
    try:
        info = ShardInfo(**json.loads((job.out_dir / _sidecar(name)).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    expected = (name, k * job.per_shard, min(job.per_shard, total - k * job.per_shard))
    if (info.file, info.first, info.samples) != expected or not (job.out_dir / name).is_file():
        return None
    return info if sha256_file(job.out_dir / name) == info.sha256 else None


def _prepare_dir(out_dir: Path, plan: dict, overwrite: bool) -> None:
    """Create ``out_dir`` or check it holds this plan (or nothing); with ``overwrite`` clear our files first."""
    plan_path = out_dir / PLAN_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardPlanError(f"--out {out_dir}: exists and is not a directory; allowed: a new or shard directory")
    old = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    entries = [p for p in out_dir.iterdir()] if out_dir.is_dir() else []
    if entries and old != plan and not overwrite:
        what = (
            f"holds shards of another plan (differs in {', '.join(k for k in plan if old.get(k) != plan[k])})"
            if isinstance(old, dict) else "is not empty and holds no shard plan"
        )  # fmt: skip
        raise ShardPlanError(f"--out {out_dir}: {what}; pass --overwrite to replace its shards")
    if entries and old != plan:
        for p in entries:
            if p.name in (PLAN_FILE, INDEX_FILE, SPLITS_FILE) or p.name.startswith(("shard-", ".shard-", ".plan")):
                p.unlink()
            elif p.is_dir() and p.name in ("train", "val"):
                shutil.rmtree(p)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp-*"):  # partial files of a killed run
        stale.unlink()
    (out_dir / INDEX_FILE).unlink(missing_ok=True)  # written again last: until then the set is incomplete
    _write_atomic(plan_path, json.dumps(plan, indent=1))


def write_shards(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    shard_size: int,
    workers: int = 1,
    compression: str | None = None,
    source: str = "",
    preprocess: list | None = None,
    task: str | None = None,
    block_rows: int | None = None,
    overwrite: bool = False,
) -> ShardIndex:
    """Write ``dataset`` (its samples in order) as shards of about ``shard_size`` bytes to ``out_dir``.

    ``workers`` processes (fork) write shards in parallel; the files are byte-identical whatever ``workers``.
    ``compression="zstd"`` compresses each whole Arrow file. ``task="language_model"`` stores token windows
    (tensors (seq_len + 1,) or TokenWindows' ``(x, y)`` pairs). ``source``/``preprocess`` are recorded in the
    index. A rerun resumes: finished shards whose checksums match are kept. Returns the written index.
    """
    if shard_size < 1 or workers < 1 or (block_rows is not None and block_rows < 1):
        raise ValueError(f"shard_size {shard_size}, workers {workers}, block_rows {block_rows}: allowed: >= 1")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: allowed: {', '.join(map(str, COMPRESSIONS))}")
    total = len(dataset)
    if total == 0:
        raise ValueError(f"{source or 'dataset'}: no samples to shard")
    out_dir = Path(out_dir)
    probe = [dataset[i] for i in range(min(total, PROBE_SAMPLES))]
    if task == LANGUAGE_MODEL:
        probe = [as_tokens(s) for s in probe]
    codec = SampleCodec.from_samples(probe, task)
    encoded = codec.encode(probe)
    per_sample = max(1, math.ceil(encoded.nbytes / len(probe)))
    per_shard = max(1, shard_size // per_sample)
    block_rows = min(per_shard, block_rows or max(1, BLOCK_BYTES // per_sample))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, codec.schema) as probe_writer:
        probe_writer.write_batch(encoded)
    plan = {
        "samples": total, "samples_per_shard": per_shard, "shards": math.ceil(total / per_shard),
        "block_rows": block_rows, "compression": compression, "task": task, "structure": codec.structure,
        "columns": codec.columns, "source": source, "preprocess": preprocess or [],
        "probe_sha256": hashlib.sha256(sink.getvalue()).hexdigest(),  # the first samples' content
    }  # fmt: skip
    _prepare_dir(out_dir, plan, overwrite)
    job = _Job(dataset, codec, out_dir, per_shard, block_rows, compression)
    infos: dict[int, ShardInfo] = {}
    for k in range(plan["shards"]):
        if (info := _kept(job, k, total)) is not None:
            infos[k] = info
    todo = [k for k in range(plan["shards"]) if k not in infos]
    if workers == 1 or len(todo) <= 1:
        for k in todo:
            infos[k] = _write_shard(job, k, total)
    else:
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(
            min(workers, len(todo)), mp_context=context, initializer=_init_worker, initargs=(job,)
        ) as pool:
            for k, info in zip(todo, pool.map(_worker_write, todo, [total] * len(todo))):
                infos[k] = info
    index = ShardIndex(
        total, codec.structure, codec.columns, compression, [infos[k] for k in range(plan["shards"])],
        source, list(preprocess or []), task,
    )  # fmt: skip
    _write_atomic(out_dir / INDEX_FILE, index.to_json())
    return index


def _json_safe(info: dict) -> dict:
    """The JSON-serialisable entries of a DatasetSplits' ``info``."""
    safe = {}
    for key, value in info.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        safe[str(key)] = value
    return safe


def write_splits(splits: DatasetSplits, out_dir: str | Path, **options: Any) -> dict[str, ShardIndex]:
    """Write ``splits.train`` to ``out_dir/train/`` and ``splits.val`` (if any) to ``out_dir/val/``, then
    ``splits.json`` (split names, num_classes, input_shape, info). ``options``: those of :func:`write_shards`."""
    out_dir = Path(out_dir)
    allowed = {"train", "val", SPLITS_FILE}
    if out_dir.is_dir() and not options.get("overwrite") and any(p.name not in allowed for p in out_dir.iterdir()):
        raise ShardPlanError(f"--out {out_dir}: holds files other than train/, val/, splits.json; "
                             f"pass --overwrite to replace its shards")  # fmt: skip
    if out_dir.is_dir() and options.get("overwrite"):
        for p in out_dir.iterdir():
            if p.name in (PLAN_FILE, INDEX_FILE) or p.name.startswith(("shard-", ".shard-")):
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPLITS_FILE).unlink(missing_ok=True)
    source = options.pop("source", "")
    parts = {"train": splits.train, "val": splits.val}
    written = {}
    for name, dataset in parts.items():
        if dataset is not None:
            written[name] = write_shards(dataset, out_dir / name, source=source, **options)
        elif (out_dir / name).is_dir() and options.get("overwrite"):
            shutil.rmtree(out_dir / name)
    meta = {
        "splits": list(written),
        "num_classes": splits.num_classes,
        "input_shape": list(splits.input_shape) if splits.input_shape is not None else None,
        "info": _json_safe(splits.info),
    }
    _write_atomic(out_dir / SPLITS_FILE, json.dumps(meta, indent=1) + "\n")
    return written
