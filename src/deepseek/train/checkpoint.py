"""Atomic, verified checkpoints: ``checkpoints/step-00000120/{model.safetensors,state.pt,meta.json}``.

A checkpoint is written into a hidden temporary directory, every file fsynced, ``meta.json`` (with
each file's size and SHA-256) written last, and the directory renamed into place: a crash or
``kill -9`` leaves either a complete checkpoint or an ignored ``.tmp-*`` directory. Weights go to
safetensors; everything else (optimizer, scheduler, scaler, EMA, RNG states, data position) to a
``torch.save`` file that is read back with ``weights_only=True``, so nothing is ever unpickled as
an arbitrary object. ``best.json`` names the best checkpoint, which pruning never removes.

``meta.json`` carries the format version (``FORMAT_VERSION``) and :func:`claim_run_dir` writes the run
directory's ``format.json``; what the versions mean, and how readers treat them, is in :mod:`deepseek.runs`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import save_model

# The read side of the checkpoint format lives in deepseek.runs (below train), so that serving and
# `deepseek eval` read runs without the training layer; these names stay importable from here.
from deepseek.runs import (  # noqa: F401
    FORMAT_FILE,
    FORMAT_VERSION,
    META_FILE,
    MODEL_FILE,
    STATE_FILE,
    CheckpointError,
    CheckpointMismatchError,
    FormatVersionError,
    check_run_format,
    checkpoint_dirs,
    latest_valid_checkpoint,
    load_weights,
    resolve_checkpoint,
    verify,
)
from deepseek.runs import sha256_of as _sha256

BEST_FILE = "best.json"  # MODEL_FILE, STATE_FILE, META_FILE: the format's files, defined in deepseek.runs
# The rest of what a run writes into its run directory (the RunLogger's metrics log and TensorBoard
# events, the Trainer's summary and final weights); `deepseek train` rewrites config.yaml itself.
CHECKPOINT_DIR, METRICS_FILE, TB_DIR, SUMMARY_FILE, FINAL_WEIGHTS = (
    "checkpoints", "metrics.jsonl", "tb", "summary.json", "final/model.safetensors"
)  # fmt: skip


class DiskFullError(OSError):
    """No space left on the device while writing a checkpoint or the final weights; ``str()`` is one line."""

    def __str__(self) -> str:
        return self.strerror or "disk full"


def _disk_full_cause(exc: BaseException) -> OSError | None:
    """The ENOSPC error behind ``exc``, if any: torch.save reports one as a RuntimeError about stream
    positions, with the OSError only in its context."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _raise_if_disk_full(exc: BaseException, what: str) -> None:
    if (cause := _disk_full_cause(exc)) is not None:
        detail = cause.strerror or os.strerror(errno.ENOSPC)
        raise DiskFullError(
            errno.ENOSPC,
            f"disk full ({detail}) while writing {what}; free some space, then "
            "rerun with --resume auto (resume='auto'): the partial write was removed",
        ) from exc


class RunDirInUseError(FileExistsError):
    """Training into a run directory that holds an earlier run, without resuming or overwriting it."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _atomic_write(path: Path, write_fn: Callable[[Path], None]) -> None:
    """``write_fn(tmp)`` writes and fsyncs a temporary file beside ``path``, which then replaces ``path``:
    ``path`` is the old file or the new one, never a partial one. On any error (Ctrl-C included) the
    temporary file is removed; a full disk raises :class:`DiskFullError` (one line)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # remove_earlier_run knows this name
    try:
        write_fn(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_if_disk_full(exc, str(path))
        raise
    _fsync_dir(path.parent)  # the rename itself survives a crash


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a fsynced temporary file and a rename: all or nothing."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def save_weights(model: nn.Module, path: Path) -> None:
    """Model weights to safetensors (tied weights stored once), fsynced."""
    save_model(model, str(path), metadata={"format": "pt"})
    _fsync_file(path)


def save_weights_atomic(model: nn.Module, path: Path) -> None:
    """:func:`save_weights` through a temporary file and a rename: ``path`` is the old file or the new
    one, never a partial one; a full disk raises :class:`DiskFullError`."""
    _atomic_write(path, lambda tmp: save_weights(model, tmp))


class CheckpointManager:
    """Writes, lists, verifies and prunes the checkpoints of one run directory."""

    def __init__(self, directory: str | Path, keep_last: int = 3) -> None:
        self.directory = Path(directory)
        self.keep_last = keep_last

    def save(self, step: int, model: nn.Module, state: dict[str, Any], best: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step`` atomically; with ``best``, also record it as the best one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step-{step:08d}"
        if final.exists():
            if best is not None:
                self.mark_best(step, best)
            return final
        tmp = self.tmp_dir(step)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._write(tmp, final, step, model, state)
        except BaseException as exc:  # a full disk, an error, Ctrl-C: no partial directory stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            _raise_if_disk_full(exc, f"checkpoint {final}")
            raise
        if best is not None:
            self.mark_best(step, best)
        self.prune()
        return final

    def _write(self, tmp: Path, final: Path, step: int, model: nn.Module, state: dict[str, Any]) -> None:
        tmp.mkdir()
        save_weights(model, tmp / MODEL_FILE)
        self.seal(tmp, final, step, state)

    def tmp_dir(self, step: int, pid: int | None = None) -> Path:
        """The hidden directory checkpoint ``step`` is written into before its rename; ``pid`` names the
        writing process (default: this one), which :meth:`prune` spares. Sharded saves use the main rank's."""
        return self.directory / f".tmp-step-{step:08d}-{os.getpid() if pid is None else pid}"

    def seal(
        self, tmp: Path, final: Path, step: int, state: dict[str, Any], extra: dict[str, Any] | None = None
    ) -> None:
        """Finish a checkpoint whose other files are in ``tmp``: write ``state.pt``, then ``meta.json`` LAST
        (every file under ``tmp`` with its size and SHA-256, plus ``extra``), fsync, rename ``tmp`` to ``final``."""
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        names = sorted(str(f.relative_to(tmp)) for f in tmp.rglob("*") if f.is_file())
        for name in names:  # files other processes wrote (a sharded save's) reach the disk before meta.json
            _fsync_file(tmp / name)
        for sub in {(tmp / name).parent for name in names} - {tmp}:
            _fsync_dir(sub)
        files = {name: {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in names}
        meta = {"format_version": FORMAT_VERSION, "step": step, "epoch": state.get("epoch"), "time": time.time(),
                **(extra or {}), "files": files}  # fmt: skip
        write_json_atomic(tmp / META_FILE, meta)
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(self.directory)

    def mark_best(self, step: int, record: dict[str, Any]) -> None:
        """Record the saved checkpoint ``step`` as the best one (``record``: monitor, value, step)."""
        write_json_atomic(self.directory / BEST_FILE, {"name": f"step-{step:08d}", **record})

    def checkpoints(self) -> list[Path]:
        """Complete-looking checkpoint directories, oldest first."""
        return checkpoint_dirs(self.directory)

    def best(self) -> Path | None:
        try:
            name = json.loads((self.directory / BEST_FILE).read_text())["name"]
        except (OSError, ValueError, KeyError):
            return None
        path = self.directory / name
        return path if path.is_dir() else None

    def prune(self) -> None:
        keep = set(self.checkpoints()[-self.keep_last :])
        best = self.best()
        if best is not None:
            keep.add(best)
        for path in self.checkpoints():
            if path not in keep:
                shutil.rmtree(path, ignore_errors=True)
        for stale in self.directory.glob(".tmp-step-*"):
            if not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)

    def newest_first(self) -> list[Path]:
        return list(reversed(self.checkpoints()))

    def latest_valid(self) -> Path | None:
        """The newest checkpoint that verifies; corrupt or partial ones are skipped with a warning."""
        return latest_valid_checkpoint(self.directory)


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the training state (read with ``weights_only=True``).

    A damaged checkpoint raises :class:`CheckpointError` (a state.pt that is no torch file, or that
    holds objects ``weights_only`` refuses to unpickle, included); weights that do not fit ``model``
    :class:`CheckpointMismatchError`."""
    verify(path)
    load_weights(model, path / MODEL_FILE)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError (not a zip archive), EOFError, ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{STATE_FILE} does not load ({exc.__class__.__name__}: {first_line})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{STATE_FILE} holds a {type(state).__name__}, expected a dict")
    return state


# ------------------------------------------------------------------------------ run directories
def earlier_run(run_dir: str | Path) -> list[str]:
    """What marks ``run_dir`` as holding a run, relative to it: checkpoints, best.json, final weights, and
    the logs a run writes from its first step (one killed before its first checkpoint left only those)."""
    run_dir = Path(run_dir)
    ckpts = CheckpointManager(run_dir / CHECKPOINT_DIR)
    found = [f"{CHECKPOINT_DIR}/{p.name}" for p in ckpts.checkpoints()]
    names = (f"{CHECKPOINT_DIR}/{BEST_FILE}", FINAL_WEIGHTS, METRICS_FILE, SUMMARY_FILE)
    found += [name for name in names if (run_dir / name).is_file()]
    found += [f"{TB_DIR}/{p.name}" for p in sorted((run_dir / TB_DIR).glob("events.out.tfevents.*"))]
    return found


def claim_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Before training into ``run_dir``: a new run (neither ``resume`` nor ``overwrite``) must not mix
    with an earlier one (a later resume='auto' would pick up its checkpoints); ``overwrite`` deletes the
    earlier run's files first (on the main rank only; the others only read). A run directory, or one of
    its checkpoints, in a newer format is refused (:class:`FormatVersionError`), overwriting included: it
    may hold files this release does not know to remove. The main rank then marks the directory with
    this release's format version (an older run resumed here is read as is and written in this one)."""
    version = check_run_format(run_dir)
    # What the main rank finds, on every rank, before any rank goes on: a rank that starts late would
    # otherwise see the logs the main rank has begun writing for this very run.
    found = _as_main_rank_sees(earlier_run(run_dir) if is_main and not (resume or overwrite) else [])
    if overwrite and is_main:
        remove_earlier_run(run_dir)
    elif not (resume or overwrite) and found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise RunDirInUseError(
            f"run_dir '{run_dir}' already holds an earlier run ({shown}); pass resume='auto' to continue it, "
            "or overwrite=True to delete that run's files and start over"
        )
    if is_main and (version < FORMAT_VERSION or not (run_dir / FORMAT_FILE).is_file()):
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / FORMAT_FILE, {"format_version": FORMAT_VERSION})


def _as_main_rank_sees(found: list[str]) -> list[str]:
    """The main rank's ``found`` on every rank of the default process group (a collective), as is without one."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return found
    box = [found]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def remove_earlier_run(run_dir: str | Path) -> None:
    """Delete what a training run wrote into ``run_dir``: checkpoints (and their temporary directories),
    best.json, the metrics log, TensorBoard event files, summary.json and the final weights. Files it
    did not write stay, and so do the directories that still hold them."""
    run_dir = Path(run_dir)
    ckpt_dir, tb_dir, final = run_dir / CHECKPOINT_DIR, run_dir / TB_DIR, run_dir / FINAL_WEIGHTS
    for path in CheckpointManager(ckpt_dir).checkpoints() + sorted(ckpt_dir.glob(".tmp-step-*")):
        shutil.rmtree(path, ignore_errors=True)
    files = [ckpt_dir / BEST_FILE, run_dir / METRICS_FILE, run_dir / SUMMARY_FILE, final]
    files += sorted(tb_dir.glob("events.out.tfevents.*"))
    # write_text_atomic's temporary files, left behind by a kill mid-write
    files += sorted(ckpt_dir.glob(f".{BEST_FILE}.tmp-*")) + sorted(run_dir.glob(f".{SUMMARY_FILE}.tmp-*"))
    files += sorted(final.parent.glob(f".{final.name}.tmp-*"))  # save_weights_atomic's
    for path in files:
        path.unlink(missing_ok=True)
    for directory in (ckpt_dir, tb_dir, final.parent):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
