"""Asynchronous jobs kept in SQLite: submit, then poll; a restarted server finishes what it accepted.

A job is written (``queued``) before the 202 goes out, so an accepted job survives a ``kill -9``:
on start the server puts jobs it was running back in the queue. Jobs are therefore **at least once**: a
job running when the server died runs again (``attempts`` counts its runs). A client that retries a
submission sends the same ``Idempotency-Key``; the store keeps one job per key (a unique index), so the
retry gets the job it already made instead of a second one.

The retry cap is fair to the innocent: the store cannot tell which of several jobs running together
(in one batch, or queued behind the culprit) killed the server, so a job interrupted while running with
others is not charged; it is marked ``isolate`` and from then on runs alone: no other job is claimed
while it runs, and the server runs it in a forward pass of its own (``Batcher.run_alone``), never
batched with other requests. Only a crash during such an isolated run counts (``crashes``); a job that
crashed the server ``max_attempts`` times alone fails with that reason instead of crashing it forever.
States: ``queued -> running -> succeeded | failed``, or ``cancelled`` (DELETE; a running job's result is
then thrown away).
SQLite in WAL mode with one short transaction per change: a crash never leaves a half-written row.
Every write waits for an fsync (``synchronous=FULL``), so the server calls the store from worker threads
(``asyncio.to_thread``), never from its event loop; one lock serialises them on the one connection.

Several server processes (replicas) share one PostgreSQL store instead (``open_job_store`` with a
``postgresql://`` URL, :mod:`deepseek.serve.jobs_pg`): the same methods and semantics, jobs claimed under
row locks and held by leases that a killed replica stops renewing.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from deepseek.serve.job_records import (
    FINAL,
    STATES,
    IdempotencyConflict,
    canonical_request,
    check_same_request,
    job_view,
)

if TYPE_CHECKING:
    from deepseek.serve.jobs_pg import PostgresJobStore

__all__ = ["FINAL", "STATES", "IdempotencyConflict", "JobStore", "canonical_request", "open_job_store", "redact_url"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT, status TEXT NOT NULL,
    request TEXT NOT NULL, result TEXT, error TEXT,
    created REAL NOT NULL, started REAL, finished REAL, attempts INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT, isolate INTEGER NOT NULL DEFAULT 0, crashes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
"""
# columns added after the first release: a store opened on an older file gains them (NULL / 0)
ADDED_COLUMNS = {
    "idempotency_key": "TEXT",
    "isolate": "INTEGER NOT NULL DEFAULT 0",
    "crashes": "INTEGER NOT NULL DEFAULT 0",
}
KEY_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs (idempotency_key)"  # NULLs are distinct


F = TypeVar("F", bound=Callable[..., Any])


def _locked(method: F) -> F:
    """Run ``method`` holding the store's lock: threads share one connection, one statement at a time."""

    @functools.wraps(method)
    def locked(self: JobStore, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]


class JobStore:
    """The job table. Every method is one transaction and blocks on disk: call it off the event loop."""

    def __init__(self, path: str | Path) -> None:
        self.lock = threading.RLock()  # re-entrant: claim() and cancel() read back through get()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an accepted job is on disk before the 202
        self.db.executescript(SCHEMA)
        have = {row["name"] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for column, decl in ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")
        self.db.execute(KEY_INDEX)

    @_locked
    def close(self) -> None:
        self.db.close()

    @_locked
    def recover(self, max_attempts: int = 3, per_model: dict[str, int] | None = None) -> tuple[int, int]:
        """Jobs a killed server was running go back in the queue, to run alone from now on; one that was
        running alone is charged the crash, and fails once charged ``max_attempts`` times (``per_model``
        overrides it by model name). Returns (re-queued, failed)."""
        per_model = per_model or {}
        requeued = failed = 0
        rows = self.db.execute("SELECT id, model, isolate, crashes FROM jobs WHERE status='running'").fetchall()
        for row in rows:
            crashes = row["crashes"] + 1 if row["isolate"] else row["crashes"]  # ran alone: the crash is its own
            cap = per_model.get(row["model"], max_attempts)
            if crashes >= cap:
                error = f"500: the job crashed the server {crashes} times (max_job_attempts {cap}); not retried"
                self.db.execute(
                    "UPDATE jobs SET status='failed', error=?, finished=?, crashes=? WHERE id=? AND status='running'",
                    (error, time.time(), crashes, row["id"]),
                )
                failed += 1
            else:
                self.db.execute("UPDATE jobs SET status='queued', started=NULL, isolate=1, crashes=? "
                                "WHERE id=? AND status='running'", (crashes, row["id"]))  # fmt: skip
                requeued += 1
        return requeued, failed

    @_locked
    def submit(self, model: str, version: str | None, request: dict[str, Any]) -> str:
        """A new queued job's id."""
        return self.submit_once(model, version, request, None)[0]

    @_locked
    def submit_once(
        self, model: str, version: str | None, request: dict[str, Any], key: str | None
    ) -> tuple[str, bool]:
        """The job of ``key``, made now unless it exists (always, without a key): (id, made now).
        :class:`IdempotencyConflict` when ``key`` names a job of another model, version or request."""
        job_id = None if key is None else self.find_key(model, version, request, key)
        if job_id is not None:
            return job_id, False
        job_id = uuid.uuid4().hex
        self.db.execute(
            "INSERT INTO jobs (id, model, version, status, request, created, idempotency_key) "
            "VALUES (?, ?, ?, 'queued', ?, ?, ?)",
            (job_id, model, version, json.dumps(request), time.time(), key),
        )
        return job_id, True

    @_locked
    def find_key(self, model: str, version: str | None, request: dict[str, Any], key: str) -> str | None:
        """The id of the job submitted with ``key`` (None: no such job), checked to be the same request."""
        row = self.db.execute("SELECT id, model, version, request FROM jobs WHERE idempotency_key=?", (key,)).fetchone()
        return None if row is None else check_same_request(row, model, version, request, key)

    @_locked
    def claim(self) -> dict[str, Any] | None:
        """The oldest queued job, marked running (None when the queue is empty, or while a job marked
        ``isolate`` must run alone: it waits for the running jobs to finish and no job starts beside it).
        The result has ``isolate``: run it in a forward pass of its own."""
        running = self.db.execute(
            "SELECT COUNT(*) AS n, COALESCE(MAX(isolate), 0) AS alone FROM jobs WHERE status='running'"
        ).fetchone()
        if running["alone"]:
            return None
        row = self.db.execute("SELECT id, isolate FROM jobs WHERE status='queued' ORDER BY created LIMIT 1").fetchone()
        if row is None or (row["isolate"] and running["n"]):
            return None
        cur = self.db.execute(
            "UPDATE jobs SET status='running', started=?, attempts=attempts+1 WHERE id=? AND status='queued'",
            (time.time(), row["id"]),
        )
        if not cur.rowcount:
            return None
        job = self.get(row["id"], with_request=True)
        return None if job is None else {**job, "isolate": bool(row["isolate"])}

    @_locked
    def finish(self, job_id: str, result: Any = None, error: str | None = None) -> bool:
        """Record the outcome unless the job was cancelled meanwhile; True when recorded."""
        status = "failed" if error is not None else "succeeded"
        cur = self.db.execute(
            "UPDATE jobs SET status=?, result=?, error=?, finished=? WHERE id=? AND status='running'",
            (status, None if error is not None else json.dumps(result), error, time.time(), job_id),
        )
        return cur.rowcount == 1

    @_locked
    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job: the job's status afterwards (None: no such job)."""
        self.db.execute(
            "UPDATE jobs SET status='cancelled', finished=? WHERE id=? AND status IN ('queued', 'running')",
            (time.time(), job_id),
        )
        job = self.get(job_id)
        return None if job is None else job["status"]

    @_locked
    def get(self, job_id: str, with_request: bool = False) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            return None
        return job_view(row, with_request)

    @_locked
    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATES} | {r["status"]: r["n"] for r in rows}


POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg2")  # the last: SQLAlchemy's spelling


def open_job_store(where: str | Path, lease_s: float = 15.0) -> JobStore | PostgresJobStore:
    """The job store at ``where``: a SQLite file (one server process), or a ``postgresql://`` (``postgres://``)
    URL: :class:`~deepseek.serve.jobs_pg.PostgresJobStore`, shared by replicas, where a replica silent for
    ``lease_s`` seconds has its running jobs taken over. A database that cannot be reached is a one-line
    ``ValueError`` naming the URL without its password."""
    scheme = str(where).split("://", 1)[0].lower() if "://" in str(where) else ""
    if scheme not in POSTGRES_SCHEMES:
        return JobStore(where)
    url = "postgresql://" + str(where).split("://", 1)[1]
    try:
        import psycopg2

        from deepseek.serve.jobs_pg import PostgresJobStore
    except ModuleNotFoundError as exc:
        raise ValueError(f"jobs database {redact_url(url)}: PostgreSQL needs {exc.name}: "
                         "pip install 'deepseek-framework[postgres]'") from None  # fmt: skip
    try:
        return PostgresJobStore(url, lease_s)
    except psycopg2.Error as exc:
        message = " ".join(str(exc).split())  # libpq's messages span lines
        parts = urlsplit(url)
        for password in [parts.password, *(v for k, v in parse_qsl(parts.query) if k == "password")]:
            if password:  # libpq does not echo it today; a later version must not leak it through this message
                message = message.replace(password, "***")
        raise ValueError(f"cannot open the PostgreSQL job store {redact_url(url)}: {message}") from None


def redact_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, host = netloc.rsplit("@", 1)
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = "&".join(f"{k}=***" if k == "password" else f"{k}={v}" if v else k
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))  # fmt: skip
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
