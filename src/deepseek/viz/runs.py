"""Find runs and profiler summaries under a log directory and read their files tolerantly and incrementally.

The visualizer only reads files (it never imports :mod:`deepseek.train`): ``metrics.jsonl`` and ``stats.jsonl``
of each run directory, and every profiler ``summary.json`` (``"schema": "deepseek.profile/1"``) anywhere under
the log directory. A run may be training while it is read, or may have been killed mid-write, so:

- :func:`read_jsonl` reads from a byte offset up to the last complete line and returns the offset to continue
  from: polling a growing file reads only what was appended. A last line without its newline (half-written)
  is left for the next read and reported; a complete line that is no JSON object is skipped and counted.
- Records are returned as written; a ``{"event": "resume", "step": N}`` record and records that repeat a step
  are merged by the page (later records for a step supersede earlier ones, see ``static/viz.js``).
- :func:`resolve_under` maps every path a client sends to a file inside the log directory, or refuses it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from deepseek.profiler.report import FILES as PROFILE_FILES  # the profiler's file names, named there once
from deepseek.profiler.summary import SCHEMA_ID as PROFILE_SCHEMA

RUN_FILES = ("metrics.jsonl", "stats.jsonl")  # the files of a run the page reads record by record
MAX_CHUNK_BYTES = 8 * 2**20  # one poll returns at most this much of a file; the page asks again from the offset


class OutsideLogdirError(ValueError):
    """A client's path that does not name something inside the log directory."""


@dataclass
class JsonlChunk:
    """The complete records of a JSON-lines file between ``offset`` and ``next_offset`` (bytes)."""

    records: list[dict[str, Any]] = field(default_factory=list)
    offset: int = 0  # where this read started (0 again when the file shrank: it was rewritten)
    next_offset: int = 0  # where the next read continues: after the last complete line
    size: int = 0  # the file's size when read
    more: bool = False  # complete lines beyond next_offset are left for the next read (MAX_CHUNK_BYTES)
    partial_tail: bool = False  # the file ends with a line without its newline: half-written, left for later
    bad_lines: int = 0  # complete lines that are no JSON object, skipped
    restarted: bool = False  # the file is shorter than the offset asked for: read again from the start
    notes: list[str] = field(default_factory=list)  # what the page shows about the file, one line each

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _non_finite(constant: str) -> None:
    """NaN and Infinity (Python's json writes them; a diverged loss) read as null: JSON for the browser has none."""
    return None


def read_jsonl(path: Path, offset: int = 0, max_bytes: int = MAX_CHUNK_BYTES) -> JsonlChunk:
    """The JSON-object lines of ``path`` from byte ``offset`` on (a missing file reads as empty)."""
    if offset < 0:
        raise ValueError(f"offset: {offset} is not allowed; it must be >= 0")
    chunk = JsonlChunk(offset=offset, next_offset=offset)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if offset > size:  # truncated or rewritten since the last poll: the page starts this run over
                chunk.offset = chunk.next_offset = offset = 0
                chunk.restarted = True
            f.seek(offset)
            data = f.read(max_bytes)
    except FileNotFoundError:
        return chunk
    chunk.size = size
    end = data.rfind(b"\n") + 1  # only complete lines; 0 when there is none
    if end < len(data):
        if offset + len(data) >= size:
            chunk.partial_tail = True
            chunk.notes.append(f"{path.name}: the last line is half-written (a killed or running run?); skipped")
        else:
            chunk.more = True
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_non_finite)
        except ValueError:  # UnicodeDecodeError is one too
            record = None
        if isinstance(record, dict):
            chunk.records.append(record)
        else:
            chunk.bad_lines += 1
    if chunk.bad_lines:
        chunk.notes.append(f"{path.name}: {chunk.bad_lines} line(s) that are no JSON object skipped")
    chunk.next_offset = offset + end
    return chunk


def resolve_under(logdir: Path, relative: str) -> Path:
    """``logdir / relative`` when it stays inside ``logdir`` (symlinks resolved), else OutsideLogdirError."""
    root = logdir.resolve()
    if "\x00" in relative or Path(relative).is_absolute():
        raise OutsideLogdirError(f"path {relative!r} is not inside the log directory")
    target = (root / relative).resolve()
    if target != root and not target.is_relative_to(root):
        raise OutsideLogdirError(f"path {relative!r} is not inside the log directory")
    return target


def _relative(logdir: Path, path: Path) -> str:
    rel = path.relative_to(logdir).as_posix()
    return rel if rel else "."


def _walk(logdir: Path):
    """``os.walk`` of ``logdir`` without hidden directories (``.serve``, ``.git``) and without following links."""
    for dirpath, dirnames, filenames in os.walk(logdir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        yield Path(dirpath), set(filenames)


def run_format(run_dir: Path) -> int:
    """The run directory's ``format.json`` version; 0 for runs written before it existed (or an unreadable one)."""
    try:
        version = json.loads((run_dir / "format.json").read_text()).get("format_version", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return version if isinstance(version, int) else 0


def discover(logdir: Path) -> dict[str, Any]:
    """The runs (directories holding ``metrics.jsonl``) and profiler summaries under ``logdir``.

    Returns ``{"runs": [{"name", "has_stats", "format_version"}], "profiles": [{"path", "error"}]}``, names and
    paths relative to ``logdir`` (``"."`` is ``logdir`` itself). A ``summary.json`` outside a run directory that
    cannot be read as JSON is listed with its error (it may be a broken profile); a run's own summary is not.
    """
    root = logdir.resolve()
    runs, profiles = [], []
    for directory, files in _walk(root):
        is_run = "metrics.jsonl" in files
        if is_run:
            runs.append({"name": _relative(root, directory), "has_stats": "stats.jsonl" in files,
                         "format_version": run_format(directory)})  # fmt: skip
        if "summary.json" not in files:
            continue
        path = directory / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            if not is_run:
                profiles.append({"path": _relative(root, path), "error": f"unreadable summary.json: {exc}"})
            continue
        if isinstance(summary, dict) and summary.get("schema") == PROFILE_SCHEMA:
            profiles.append({"path": _relative(root, path), "error": None})
    return {"runs": runs, "profiles": profiles}


def read_profile(logdir: Path, relative: str) -> dict[str, Any]:
    """The profiler summary at ``relative`` with ``files`` made relative to ``logdir`` (for ``/files/...`` links).

    Raises OutsideLogdirError for a path outside ``logdir`` and ValueError (one line) for a file that is
    missing, no JSON, or of another schema.
    """
    path = resolve_under(logdir, relative)
    try:
        summary = json.loads(path.read_text(), parse_constant=_non_finite)
    except FileNotFoundError:
        raise ValueError(f"{relative}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{relative}: unreadable summary.json ({exc})") from None
    if not isinstance(summary, dict) or summary.get("schema") != PROFILE_SCHEMA:
        raise ValueError(f"{relative}: not a profiler summary (its schema is not {PROFILE_SCHEMA!r})")
    links = {}
    files = dict(PROFILE_FILES)  # where the profiler writes them, when the summary does not say
    files.update(summary["files"] if isinstance(summary.get("files"), dict) else {})
    for key, name in files.items():
        if not isinstance(name, str):
            continue
        candidate = path.parent / name  # the profiler writes names relative to its output directory
        try:
            target = resolve_under(logdir, candidate.relative_to(logdir.resolve()).as_posix())
        except (OutsideLogdirError, ValueError):
            continue
        if target.is_file():
            links[key] = _relative(logdir.resolve(), target)
    summary["links"] = links
    return summary
