"""Asynchronous jobs kept in SQLite: submit, then poll; a restarted server finishes what it accepted.

A job is written (``queued``) before the 202 goes out, so an accepted job survives a ``kill -9``:
on start the server puts jobs it was running back in the queue, unless they already crashed the
server ``max_attempts`` times: those fail with that reason instead of crashing it forever. The store
cannot tell which of several running jobs killed the server, so each crash counts against every job
running at the time (a job waiting in a batcher queue behind the culprit included). States: ``queued -> running ->
succeeded | failed``, or ``cancelled`` (DELETE; a running job's result is then thrown away).
SQLite in WAL mode with one short transaction per change: a crash never leaves a half-written row.
Every write waits for an fsync (``synchronous=FULL``), so the server calls the store from worker threads
(``asyncio.to_thread``), never from its event loop; one lock serialises them on the one connection.
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
from typing import Any, TypeVar

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT, status TEXT NOT NULL,
    request TEXT NOT NULL, result TEXT, error TEXT,
    created REAL NOT NULL, started REAL, finished REAL, attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created);
"""

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

    @_locked
    def close(self) -> None:
        self.db.close()

    @_locked
    def recover(self, max_attempts: int = 3, per_model: dict[str, int] | None = None) -> tuple[int, int]:
        """Jobs a killed server was running go back in the queue, or fail once they were tried
        ``max_attempts`` times (``per_model`` overrides it by model name); returns (re-queued, failed)."""
        per_model = per_model or {}
        requeued = failed = 0
        for row in self.db.execute("SELECT id, model, attempts FROM jobs WHERE status='running'").fetchall():
            cap = per_model.get(row["model"], max_attempts)
            if row["attempts"] >= cap:
                error = f"500: the job crashed the server {row['attempts']} times (max_job_attempts {cap}); not retried"
                self.db.execute(
                    "UPDATE jobs SET status='failed', error=?, finished=? WHERE id=? AND status='running'",
                    (error, time.time(), row["id"]),
                )
                failed += 1
            else:
                self.db.execute("UPDATE jobs SET status='queued', started=NULL WHERE id=? AND status='running'",
                                (row["id"],))  # fmt: skip
                requeued += 1
        return requeued, failed

    @_locked
    def submit(self, model: str, version: str | None, request: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        self.db.execute(
            "INSERT INTO jobs (id, model, version, status, request, created) VALUES (?, ?, ?, 'queued', ?, ?)",
            (job_id, model, version, json.dumps(request), time.time()),
        )
        return job_id

    @_locked
    def claim(self) -> dict[str, Any] | None:
        """The oldest queued job, marked running (None when the queue is empty)."""
        row = self.db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY created LIMIT 1").fetchone()
        if row is None:
            return None
        cur = self.db.execute(
            "UPDATE jobs SET status='running', started=?, attempts=attempts+1 WHERE id=? AND status='queued'",
            (time.time(), row["id"]),
        )
        return self.get(row["id"], with_request=True) if cur.rowcount else None

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
        out = {k: row[k] for k in ("id", "model", "version", "status", "created", "started", "finished", "attempts")}
        if row["status"] == "succeeded":
            out["result"] = json.loads(row["result"])
        if row["error"] is not None:
            out["error"] = row["error"]
        if with_request:
            out["request"] = json.loads(row["request"])
        return out

    @_locked
    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATES} | {r["status"]: r["n"] for r in rows}
