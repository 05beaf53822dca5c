"""One writer per run directory: an OS-level lock on ``RUN/.lock``.

The process that writes a run (rank 0) holds ``fcntl.flock`` on ``RUN/.lock`` for the whole run, so a
second run started on the same directory (a rerun while orphaned ranks still train, two shells) is
refused instead of writing checkpoints next to the first. The kernel drops the lock when its holder
dies, so even ``kill -9`` leaves no stale lock to clean up; the pid written into the file is only
for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"

# run directory (resolved) -> [open descriptor holding the lock, how many holders in this process]
_held: dict[Path, list[int]] = {}


class RunDirLockedError(RuntimeError):
    """Another process is training into this run directory."""


def lock_run_dir(run_dir: str | Path) -> None:
    """Take ``run_dir``'s lock for this process (creating the directory), or raise :class:`RunDirLockedError`.

    Re-entrant within a process (the CLI and the Trainer both take it); each call needs an
    :func:`unlock_run_dir`. Errors creating the directory or the lock file raise ``OSError``.
    """
    key = Path(run_dir).resolve()
    if key in _held:
        _held[key][1] += 1
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirLockedError(
            f"run directory '{run_dir}' is in use by another training process (pid {holder}, holding "
            f"{key / LOCK_FILE}); wait for it to end or stop it, or choose another run directory"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = [fd, 1]


def unlock_run_dir(run_dir: str | Path) -> None:
    """Give back one :func:`lock_run_dir` of this process; the last one releases the lock."""
    key = Path(run_dir).resolve()
    entry = _held.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        os.close(entry[0])  # closing the only descriptor releases the flock


def check_run_dir_unlocked(run_dir: str | Path) -> None:
    """Raise :class:`RunDirLockedError` if another process holds ``run_dir``'s lock (takes and gives it back)."""
    lock_run_dir(run_dir)
    unlock_run_dir(run_dir)
