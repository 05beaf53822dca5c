"""Asynchronous jobs kept in SQLite: submit, then poll; a restarted server finishes what it accepted.

A job is written (``queued``) before the 202 goes out, so an accepted job survives a ``kill -9``:
on start the server puts jobs it was running back in the queue. States: ``queued -> running ->
succeeded | failed``, or ``cancelled`` (DELETE; a running job's result is then thrown away).
SQLite in WAL mode with one short transaction per change: a crash never leaves a half-written row.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

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


class JobStore:
    """The job table. Every method is one transaction; the server calls them from its event loop."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # an accepted job is on disk before the 202
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def recover(self) -> int:
        """Jobs a killed server was running go back in the queue; returns how many."""
        return self.db.execute("UPDATE jobs SET status='queued', started=NULL WHERE status='running'").rowcount

    def submit(self, model: str, version: str | None, request: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        self.db.execute(
            "INSERT INTO jobs (id, model, version, status, request, created) VALUES (?, ?, ?, 'queued', ?, ?)",
            (job_id, model, version, json.dumps(request), time.time()),
        )
        return job_id

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

    def finish(self, job_id: str, result: Any = None, error: str | None = None) -> bool:
        """Record the outcome unless the job was cancelled meanwhile; True when recorded."""
        status = "failed" if error is not None else "succeeded"
        cur = self.db.execute(
            "UPDATE jobs SET status=?, result=?, error=?, finished=? WHERE id=? AND status='running'",
            (status, None if error is not None else json.dumps(result), error, time.time(), job_id),
        )
        return cur.rowcount == 1

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job: the job's status afterwards (None: no such job)."""
        self.db.execute(
            "UPDATE jobs SET status='cancelled', finished=? WHERE id=? AND status IN ('queued', 'running')",
            (time.time(), job_id),
        )
        job = self.get(job_id)
        return None if job is None else job["status"]

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

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATES} | {r["status"]: r["n"] for r in rows}
