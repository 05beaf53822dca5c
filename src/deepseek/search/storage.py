"""Where a study lives, how its trials survive a killed worker, and how several local workers run.

Storages (``open_storage``):

* no URL: Optuna's ``JournalStorage`` on ``STUDY_DIR/journal.log``, an append-only log of operations that
  several processes on one machine share without a database server (no SQLite "database is locked"). Its
  writes are serialised by a lock file; Optuna 5.0's default is ``JournalFileSymlinkLock``, we pass
  ``JournalFileOpenLock`` instead: ``open(O_CREAT | O_EXCL)`` is just as atomic on local file systems and
  NFSv3+, and it also works where symbolic links do not (Windows without the symlink privilege, SMB and some
  FUSE mounts); the symlink lock only matters for NFSv2. Both create the same path ``journal.log.lock``, so
  they exclude each other: optuna-dashboard or the ``optuna`` CLI (symlink lock on POSIX) may write to a
  journal our workers use (each fails with EEXIST while the other holds it). Both leave the lock file behind
  when a worker is killed inside the few milliseconds of a write; the next writer removes it after the lock's
  grace period (30 s of an unchanged lock file), so a kill -9 costs at most that wait, never a deadlock.
* ``sqlite:///``, ``postgresql[+driver]://``, ``mysql[+driver]://``, ``mariadb[+driver]://``: Optuna's
  ``RDBStorage`` with its heartbeat (every ``heartbeat_s`` s from a thread of the worker); a trial whose
  heartbeat is older than the grace period is failed by the next worker that asks for a trial, on any
  machine. PostgreSQL or MySQL is the storage for workers on several machines.

Crash recovery: Optuna 5.0's ``JournalStorage`` has no heartbeat, so a trial whose worker was killed (kill -9,
out of memory) stays RUNNING forever. ``tag_trial`` writes the worker's host, pid and process start time
into the trial's system attrs; ``recover_stale_trials`` (called when a worker starts) fails the RUNNING trials
whose worker is gone -- same host, and the pid is dead or now belongs to a process started at another time --
and leaves the trials of live workers alone. No library does this for the journal file, hence the code here.
Retries (``retry_failed``) reuse Optuna's ``RetryHeartbeatStaleTrialCallback`` (the failed trial's params
enqueued as a WAITING trial, at most ``retry_failed`` times per original trial) for both storages, adding the
user attr ``retry_of`` (the failed trial's number). A COMPLETE or PRUNED trial is never touched.

``run_workers`` starts K spawn processes and stops them all -- with their process trees -- when one fails,
on a timeout or on Ctrl-C.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.trial import TrialState

WORKER_ATTR = "deepseek:worker"  # system attr written by tag_trial: {"host", "pid", "started"}
RETRY_ATTR = "retry_of"  # user attr of a retried trial: the number of the trial it repeats
RDB_DIALECTS = ("sqlite", "postgresql", "mysql", "mariadb")
ALLOWED_URLS = (
    "none (a journal file in the study folder), sqlite:///PATH, postgresql://USER[:PASSWORD]@HOST[:PORT]/DB, "
    "mysql://USER[:PASSWORD]@HOST[:PORT]/DB (SQLAlchemy URLs; a driver may follow the name: postgresql+psycopg2)"
)
UNTAGGED_STALE_S = 120.0  # a RUNNING journal trial never tagged this long after its start lost its worker
STOP_GRACE_S = 10.0  # how long stopped workers get to fail their trials on SIGINT before SIGKILL


def open_storage(
    url: str | None,
    study_dir: Path,
    *,
    heartbeat_s: int = 10,
    grace_s: int | None = None,
    retry_failed: int = 0,
) -> optuna.storages.BaseStorage:
    """The study's storage: the journal file ``study_dir/journal.log`` when ``url`` is None, else an RDB storage.

    ``heartbeat_s`` / ``grace_s`` (default ``2 * heartbeat_s``): RDB heartbeat interval and the silence after
    which a RUNNING trial is failed; ``retry_failed``: how many times such a trial is enqueued again.
    A URL that is not one of ``ALLOWED_URLS``, or a database that cannot be reached, raises ValueError.
    """
    if retry_failed < 0:
        raise ValueError(f"retry_failed={retry_failed}: must be an integer >= 0")
    if url is None or url == "":
        study_dir = Path(study_dir)
        study_dir.mkdir(parents=True, exist_ok=True)
        path = str(study_dir / "journal.log")
        backend = optuna.storages.journal.JournalFileBackend(path, optuna.storages.journal.JournalFileOpenLock(path))
        return optuna.storages.JournalStorage(backend)
    url, shown = _check_url(url)
    if heartbeat_s <= 0 or (grace_s is not None and grace_s <= 0):
        raise ValueError(f"heartbeat_s={heartbeat_s}, grace_s={grace_s}: must be positive integers")
    callback = _RetryWithAttr(retry_failed) if retry_failed > 0 else None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for another writer instead of "database is locked"
    else:
        engine_kwargs["pool_pre_ping"] = True  # a connection the server closed during a long trial is replaced
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=callback,
            )
    except ImportError as exc:
        from deepseek.errors import MissingDependency

        driver = "pip install psycopg2-binary" if "postgres" in url else "pip install pymysql, URL mysql+pymysql://"
        missing = exc.__cause__ or exc
        raise MissingDependency(f"storage {shown}: the database driver is not installed ({missing}; {driver})") from exc
    except Exception as exc:  # sqlalchemy's OperationalError & co: server down, wrong database or password
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"storage {shown}: cannot open the database: {first}") from exc


def _check_url(url: str) -> tuple[str, str]:
    """``(url, shown)``: the URL to open and the same with its password hidden (safe to print); ValueError
    unless it is an RDB URL Optuna supports.

    ``postgresql://`` without a driver means psycopg 3 to SQLAlchemy 2.1; where only psycopg2 is installed
    (our ``dev`` extra's psycopg2-binary) the URL is opened with ``postgresql+psycopg2://`` instead.
    """
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise ValueError(f"storage {url!r} is not a database URL; allowed: {ALLOWED_URLS}") from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() not in RDB_DIALECTS:
        raise ValueError(
            f"storage {shown!r}: unsupported database {parsed.get_backend_name()!r}; allowed: {ALLOWED_URLS}"
        )
    if parsed.drivername == "postgresql" and not _importable("psycopg") and _importable("psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
        url = parsed.render_as_string(hide_password=False)
    return url, shown


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _worker_identity(pid: int | None = None) -> dict[str, Any] | None:
    """Host, pid and start time of process ``pid`` (this one by default); None when there is no such process."""
    pid = os.getpid() if pid is None else pid
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return {"host": socket.gethostname(), "pid": pid, "started": started}


def tag_trial(trial: optuna.Trial) -> None:
    """Record this worker (host, pid, process start time) in ``trial``'s system attrs; call it first thing in
    the objective, so that ``recover_stale_trials`` can tell a trial whose worker died from a live one."""
    trial.storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, _worker_identity())


def worker_is_gone(frozen: optuna.trial.FrozenTrial, *, judge_untagged: bool = True) -> bool:
    """Whether the worker that ran ``frozen`` is known to be dead; False when it may be alive or runs elsewhere.

    A tagged trial: same host, and its pid is gone or is now another process (a different start time; pids are
    reused). An untagged one (killed between its creation and ``tag_trial``), with ``judge_untagged``: started
    over ``UNTAGGED_STALE_S`` ago, since tagging takes milliseconds. (Off where a heartbeat judges them: another
    machine's clock may be off by more than that.)
    """
    tag = frozen.system_attrs.get(WORKER_ATTR)
    if tag is None:
        if not judge_untagged or frozen.datetime_start is None:
            return False
        start = frozen.datetime_start
        now = datetime.now(tz=start.tzinfo) if start.tzinfo else datetime.now()
        return (now - start).total_seconds() > UNTAGGED_STALE_S
    if tag.get("host") != socket.gethostname():
        return False  # another machine's worker: only an RDB heartbeat can tell
    alive = _worker_identity(int(tag["pid"]))
    return alive is None or abs(alive["started"] - float(tag["started"])) > 1e-3


class _RetryWithAttr:
    """Optuna's ``RetryHeartbeatStaleTrialCallback`` (enqueues a failed trial's params, ``max_retry`` times per
    original trial) whose new trial also carries the user attr ``retry_of`` and not the dead worker's tag."""

    def __init__(self, max_retry: int) -> None:
        self.max_retry = max_retry
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = copy.deepcopy(trial)
        failed.user_attrs = {**trial.user_attrs, RETRY_ATTR: trial.number}
        failed.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != WORKER_ATTR}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry(study, failed)


def recover_stale_trials(study: optuna.Study, retry_failed: int) -> list[int]:
    """Fail the RUNNING trials whose worker is gone (see ``worker_is_gone``), enqueueing each again up to
    ``retry_failed`` times per original trial; for RDB storages also Optuna's ``fail_stale_trials`` (heartbeat).

    Returns the numbers of the trials this call failed (sorted). Safe to run from several workers at once: a
    trial another worker already failed is skipped (the storage refuses a second update of a finished trial).
    """
    storage = study._storage
    heartbeat = getattr(storage, "get_heartbeat_interval", None)  # RDBStorage (wrapped in Optuna's cache)
    has_heartbeat = heartbeat is not None and heartbeat() is not None
    retry = _RetryWithAttr(retry_failed) if retry_failed > 0 else None
    failed: list[int] = []
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_is_gone(frozen, judge_untagged=not has_heartbeat):
            continue
        try:
            if not storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile: by its own worker or by another recovering one
        failed.append(frozen.number)
        if retry is not None:
            retry(study, storage.get_trial(frozen._trial_id))
    if has_heartbeat:
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # retries through the storage's own callback
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
        failed.extend(sorted(after - before - set(failed)))
    return sorted(failed)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when its parent dies (the parent killed -9 must not leave workers that keep
    running trials the restarted study also runs); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl: no signal will come
        os._exit(1)


def _worker_main(target: Callable[..., None], args: tuple, index: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    target(*args, index)


def _process_trees(procs: list[multiprocessing.process.BaseProcess]) -> list[psutil.Process]:
    """The workers still alive and all their descendants (collected before any is signalled: an orphan cannot
    be found from its dead parent)."""
    found: list[psutil.Process] = []
    for proc in procs:
        if proc.pid is None or proc.exitcode is not None:
            continue
        try:
            root = psutil.Process(proc.pid)
            found += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return found


def _stop(procs: list[multiprocessing.process.BaseProcess], grace_s: float) -> None:
    """SIGINT the live workers (Optuna fails their trials on KeyboardInterrupt), wait up to ``grace_s``, then
    SIGKILL whatever is left of their trees. (A worker signalled between fork and exec loses the SIGINT and
    waits out the grace period.)"""
    if all(p.pid is None or p.exitcode is not None for p in procs):
        return  # nothing started or all already gone (wait() on no sentinels would sleep the whole grace)
    tree = _process_trees(procs)
    for proc in procs:
        if proc.exitcode is None and proc.pid is not None:
            try:
                os.kill(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    multiprocessing.connection.wait([p.sentinel for p in procs if p.exitcode is None], timeout=grace_s)
    tree += [p for p in _process_trees(procs) if p.pid not in {q.pid for q in tree}]
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    # the workers themselves are reaped by join, not psutil: a pid psutil reaped leaves Process.exitcode None
    workers = {p.pid for p in procs}
    psutil.wait_procs([p for p in tree if p.pid not in workers], timeout=30)
    for proc in procs:
        proc.join(timeout=30)


def run_workers(target: Callable[..., None], args: tuple, workers: int, timeout_s: float | None = None) -> None:
    """Run ``target(*args, worker_index)`` in ``workers`` spawn processes and wait for all of them.

    ``target`` and ``args`` must be picklable (a module-level function). When one worker exits non-zero the
    others are stopped and RuntimeError names its index and exit code (negative: killed by that signal);
    past ``timeout_s`` all are stopped and TimeoutError is raised; Ctrl-C (KeyboardInterrupt) stops all and
    is re-raised. Workers die with this process (Linux), so a kill -9 of it leaves no worker behind.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: must be an integer >= 1")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(target, args, i, os.getpid()), name=f"deepseek-search-worker-{i}")
        for i in range(workers)
    ]
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        for proc in procs:
            proc.start()
        while True:
            # exitcode polls waitpid: it sees a worker's end even when its sentinel stays open (a process the
            # worker started that inherited the pipe's write end outlives it), where waiting on sentinels alone
            # could block forever
            for index, proc in enumerate(procs):
                if proc.exitcode not in (None, 0):
                    raise RuntimeError(
                        f"search worker {index} (pid {proc.pid}) exited with code {proc.exitcode}; "
                        "the other workers were stopped"
                    )
            alive = [p for p in procs if p.exitcode is None]
            if not alive:
                break
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                raise TimeoutError(f"search workers still running after timeout_s={timeout_s}; all were stopped")
            # wakes at once when a worker's pipe closes; the 1 s cap is only for the case above
            multiprocessing.connection.wait([p.sentinel for p in alive], 1.0 if remaining is None else min(1.0, remaining))
    except BaseException:
        _stop(procs, STOP_GRACE_S)  # a failed worker, the timeout, KeyboardInterrupt
        raise
    finally:
        for proc in procs:
            if proc.pid is not None:  # started
                proc.join(timeout=30)
