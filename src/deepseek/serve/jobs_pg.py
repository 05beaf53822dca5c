"""The job store shared by server replicas: PostgreSQL, jobs claimed under row locks and held by leases.

Same states, methods and semantics as the SQLite :class:`~deepseek.serve.jobs.JobStore` (read its
docstring: at-least-once, ``isolate``, ``crashes``, ``max_job_attempts``), for several server processes
or hosts on one database (``deepseek-serve --jobs-db postgresql://user@host/db``):

- ``claim()`` takes the oldest queued job with ``SELECT ... FOR UPDATE SKIP LOCKED``: two replicas never
  get the same row, and neither waits for the other's lock.
- Each store (one per server process) has an ``owner`` id (``host:pid:uuid``). A claimed row records its
  owner, the attempt and ``lease_until``; a heartbeat thread renews the leases of the jobs this store runs
  every ``lease_s / 3``. A replica killed with ``kill -9`` stops renewing: once a lease has expired, the
  next ``recover()`` or ``claim()`` of any replica re-queues the job (to run alone from then on; a crash
  while alone is charged, and ``max_job_attempts`` such crashes fail it, as SQLite's recover does). A job
  whose lease is live is never touched: a live replica is running it.
- ``finish()`` records only while this store still holds the job (same owner, same attempt): a replica
  that lost its lease (a long pause, a network split) cannot overwrite the result of the rerun.
- Leases and timestamps are the database's clock (``clock_timestamp()``): the hosts' clocks may disagree.
- "Runs alone" is per replica: a crash takes down one process and the jobs it was running, so a job marked
  ``isolate`` waits only for its own replica's other jobs; claims of one store are serialised for that.
- ``close()`` (a graceful stop) puts the jobs this store was running back in the queue at once, uncharged.
- The schema is created under a transaction-level advisory lock: concurrent ``CREATE TABLE IF NOT EXISTS``
  can fail in PostgreSQL, and replicas often start together.

Connections: a psycopg2 ``ThreadedConnectionPool`` of ``pool_size`` (callers beyond it wait for one); the
heartbeat has a connection of its own, so a busy pool never delays a renewal. Written here because no
installed library claims leased jobs from PostgreSQL; queue packages (procrastinate, pgqueuer) bring their
own worker model, schema and a new dependency for what is a few statements.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extras
import psycopg2.pool

from deepseek.serve.job_records import STATES, check_same_request, job_view

log = logging.getLogger("deepseek.serve")

TABLE = "deepseek_serve_jobs"
SCHEMA_LOCK = 0x64735F6A6F6273  # pg_advisory_xact_lock key ("ds_jobs"): one replica creates the schema at a time
NOW = "EXTRACT(EPOCH FROM clock_timestamp())::double precision"  # the database's clock, as Unix seconds
LEASE = "clock_timestamp() + %s * INTERVAL '1 second'"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT, status TEXT NOT NULL,
    request TEXT NOT NULL, result TEXT, error TEXT,
    created DOUBLE PRECISION NOT NULL, started DOUBLE PRECISION, finished DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT UNIQUE,
    isolate BOOLEAN NOT NULL DEFAULT FALSE, crashes INTEGER NOT NULL DEFAULT 0,
    owner TEXT, lease_until TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS {TABLE}_status ON {TABLE} (status, created);
"""
POOL_SIZE = 8


class PostgresJobStore:
    """The job table on PostgreSQL, shared by replicas. Every method is one transaction; thread-safe."""

    def __init__(self, dsn: str, lease_s: float = 15.0, pool_size: int = POOL_SIZE) -> None:
        """``dsn``: a libpq URL (``postgresql://user:password@host:port/db``). Raises psycopg2's
        ``OperationalError`` when the database cannot be reached (``open_job_store`` words it)."""
        self.dsn, self.lease_s = dsn, float(lease_s)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self.max_attempts, self.per_model = 3, {}  # set by recover(); claim() takes jobs over with them
        self._connect = {"connect_timeout": 10, "application_name": "deepseek-serve"}
        if "connect_timeout" in dsn:
            del self._connect["connect_timeout"]
        self._slots = threading.BoundedSemaphore(pool_size)
        self._pool = psycopg2.pool.ThreadedConnectionPool(0, pool_size, dsn, **self._connect)
        self._claim_lock = threading.Lock()  # "runs alone" counts this replica's running jobs: one claim at a time
        self._held: dict[str, int] = {}  # job id -> the attempt this store runs: renewed, and finish() checks it
        self._held_lock = threading.Lock()
        self._closed = threading.Event()
        try:
            with self._cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                cur.execute(SCHEMA)
        except BaseException:
            self._pool.closeall()
            raise
        self._beat = threading.Thread(target=self._heartbeat, name="job-lease-heartbeat", daemon=True)
        self._beat.start()

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A dict cursor in one transaction (committed on success, rolled back on error) on a pooled connection."""
        with self._slots:
            conn = self._pool.getconn()
            broken = False
            try:
                with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                    yield cur
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                broken = True  # the server or the network went away: the next call connects anew
                raise
            finally:
                self._pool.putconn(conn, close=broken or bool(conn.closed))

    def _heartbeat(self) -> None:
        """Every ``lease_s / 3``: extend the lease of every job this store runs (on a connection of its own)."""
        conn = None
        while not self._closed.wait(self.lease_s / 3):
            with self._held_lock:
                held = list(self._held)
            if not held:
                continue
            try:
                if conn is None or conn.closed:
                    conn = psycopg2.connect(self.dsn, **self._connect)
                with conn, conn.cursor() as cur:
                    cur.execute(f"UPDATE {TABLE} SET lease_until={LEASE} WHERE owner=%s AND status='running' "
                                "AND id = ANY(%s)", (self.lease_s, self.owner, held))  # fmt: skip
            except psycopg2.Error as exc:  # the next beat retries; leases expire only after lease_s
                log.warning("job lease heartbeat failed: %s", " ".join(str(exc).split()))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Stop the heartbeat, put the jobs this store was running back in the queue (uncharged: a graceful
        stop is no crash), and close the connections."""
        self._closed.set()
        self._beat.join(30)
        with self._held_lock:
            held, self._held = list(self._held), {}
        try:
            if held:
                with self._cursor() as cur:
                    cur.execute(f"UPDATE {TABLE} SET status='queued', started=NULL, owner=NULL, lease_until=NULL "
                                "WHERE owner=%s AND status='running' AND id = ANY(%s)", (self.owner, held))  # fmt: skip
        finally:
            self._pool.closeall()

    def _take_over(self, cur: Any) -> tuple[int, int]:
        """Re-queue (or fail, once charged ``max_attempts`` crashes) running jobs whose lease expired."""
        cur.execute(f"SELECT id, model, isolate, crashes FROM {TABLE} WHERE status='running' AND "
                    "(lease_until IS NULL OR lease_until < clock_timestamp()) FOR UPDATE SKIP LOCKED")  # fmt: skip
        requeued = failed = 0
        for row in cur.fetchall():
            crashes = row["crashes"] + 1 if row["isolate"] else row["crashes"]  # ran alone: the crash is its own
            cap = self.per_model.get(row["model"], self.max_attempts)
            if crashes >= cap:
                error = f"500: the job crashed the server {crashes} times (max_job_attempts {cap}); not retried"
                cur.execute(f"UPDATE {TABLE} SET status='failed', error=%s, finished={NOW}, crashes=%s, "
                            "lease_until=NULL WHERE id=%s", (error, crashes, row["id"]))  # fmt: skip
                failed += 1
            else:
                cur.execute(f"UPDATE {TABLE} SET status='queued', started=NULL, isolate=TRUE, crashes=%s, "
                            "owner=NULL, lease_until=NULL WHERE id=%s", (crashes, row["id"]))  # fmt: skip
                requeued += 1
        return requeued, failed

    def recover(self, max_attempts: int = 3, per_model: dict[str, int] | None = None) -> tuple[int, int]:
        """Jobs whose replica's lease expired (it was killed) go back in the queue, to run alone from now on;
        one that was running alone is charged the crash, and fails once charged ``max_attempts`` times
        (``per_model`` overrides it by model name). Jobs with a live lease are left alone. Returns
        (re-queued, failed). The caps are kept for the take-overs that ``claim()`` does."""
        self.max_attempts, self.per_model = max_attempts, dict(per_model or {})
        with self._cursor() as cur:
            return self._take_over(cur)

    def submit(self, model: str, version: str | None, request: dict[str, Any]) -> str:
        """A new queued job's id."""
        return self.submit_once(model, version, request, None)[0]

    def submit_once(
        self, model: str, version: str | None, request: dict[str, Any], key: str | None
    ) -> tuple[str, bool]:
        """The job of ``key``, made now unless it exists (always, without a key): (id, made now).
        :class:`IdempotencyConflict` when ``key`` names a job of another model, version or request.
        Two replicas racing with one key make one job: the unique index settles it (``ON CONFLICT``)."""
        if key is not None and (found := self.find_key(model, version, request, key)) is not None:
            return found, False
        job_id = uuid.uuid4().hex
        with self._cursor() as cur:
            cur.execute(f"INSERT INTO {TABLE} (id, model, version, status, request, created, idempotency_key) "
                        f"VALUES (%s, %s, %s, 'queued', %s, {NOW}, %s) ON CONFLICT (idempotency_key) DO NOTHING "
                        "RETURNING id", (job_id, model, version, json.dumps(request), key))  # fmt: skip
            made = cur.fetchone() is not None
        if made:
            return job_id, True
        assert key is not None  # only a key can conflict
        found = self.find_key(model, version, request, key)  # another submission of this key won the race
        assert found is not None, "a job with this key was inserted and jobs are never deleted"
        return found, False

    def find_key(self, model: str, version: str | None, request: dict[str, Any], key: str) -> str | None:
        """The id of the job submitted with ``key`` (None: no such job), checked to be the same request."""
        with self._cursor() as cur:
            cur.execute(f"SELECT id, model, version, request FROM {TABLE} WHERE idempotency_key=%s", (key,))
            row = cur.fetchone()
        return None if row is None else check_same_request(row, model, version, request, key)

    def claim(self) -> dict[str, Any] | None:
        """The oldest queued job, marked running by this store under a fresh lease (None when the queue is
        empty, or while a job marked ``isolate`` must run alone on this replica). Takes over expired leases
        first. The result has ``isolate``: run it in a forward pass of its own."""
        with self._claim_lock, self._cursor() as cur:
            requeued, failed = self._take_over(cur)
            if requeued or failed:
                log.warning("took over %d job(s) whose replica's lease expired: %d re-queued to run alone, %d failed "
                            "(max_job_attempts)", requeued + failed, requeued, failed)  # fmt: skip
            cur.execute(f"SELECT COUNT(*) AS n, COALESCE(BOOL_OR(isolate), FALSE) AS alone FROM {TABLE} "
                        "WHERE status='running' AND owner=%s", (self.owner,))  # fmt: skip
            mine = cur.fetchone()
            if mine["alone"]:
                return None
            cur.execute(f"SELECT id, isolate FROM {TABLE} WHERE status='queued' ORDER BY created, id LIMIT 1 "
                        "FOR UPDATE SKIP LOCKED")  # fmt: skip
            row = cur.fetchone()
            if row is None or (row["isolate"] and mine["n"]):
                return None
            cur.execute(f"UPDATE {TABLE} SET status='running', started={NOW}, attempts=attempts+1, owner=%s, "
                        f"lease_until={LEASE} WHERE id=%s RETURNING *", (self.owner, self.lease_s, row["id"]))  # fmt: skip
            job = cur.fetchone()
        with self._held_lock:  # committed: from now on the heartbeat renews it, and finish() may record it
            self._held[job["id"]] = job["attempts"]
        return {**job_view(job, with_request=True), "isolate": bool(row["isolate"])}

    def finish(self, job_id: str, result: Any = None, error: str | None = None) -> bool:
        """Record the outcome if this store still holds the job (not cancelled, not taken over after its
        lease expired); True when recorded."""
        with self._held_lock:
            attempt = self._held.pop(job_id, None)
        if attempt is None:
            return False
        status = "failed" if error is not None else "succeeded"
        with self._cursor() as cur:
            cur.execute(f"UPDATE {TABLE} SET status=%s, result=%s, error=%s, finished={NOW}, lease_until=NULL "
                        "WHERE id=%s AND status='running' AND owner=%s AND attempts=%s",
                        (status, None if error is not None else json.dumps(result), error, job_id, self.owner,
                         attempt))  # fmt: skip
            return cur.rowcount == 1

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job: the job's status afterwards (None: no such job)."""
        with self._cursor() as cur:
            cur.execute(f"UPDATE {TABLE} SET status='cancelled', finished={NOW}, lease_until=NULL "
                        "WHERE id=%s AND status IN ('queued', 'running')", (job_id,))  # fmt: skip
            cur.execute(f"SELECT status FROM {TABLE} WHERE id=%s", (job_id,))
            row = cur.fetchone()
        return None if row is None else row["status"]

    def get(self, job_id: str, with_request: bool = False) -> dict[str, Any] | None:
        with self._cursor() as cur:
            cur.execute(f"SELECT * FROM {TABLE} WHERE id=%s", (job_id,))
            row = cur.fetchone()
        return None if row is None else job_view(row, with_request)

    def counts(self) -> dict[str, int]:
        with self._cursor() as cur:
            cur.execute(f"SELECT status, COUNT(*) AS n FROM {TABLE} GROUP BY status")
            rows = cur.fetchall()
        return {s: 0 for s in STATES} | {r["status"]: r["n"] for r in rows}
