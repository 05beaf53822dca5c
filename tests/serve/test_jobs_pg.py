"""The job store: its protocol on both backends (SQLite, PostgreSQL), then what only a shared PostgreSQL
store does, on a real server (tests/postgres.py): claims by several stores, a live lease left alone, a
killed replica's job taken over, a stale owner refused, an idempotency race settled to one job."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deepseek.serve.jobs import IdempotencyConflict, JobStore, open_job_store
from tests import postgres, process_tree

postgres_server, postgres_url = postgres.postgres_server, postgres.postgres_url  # the fixtures, for this module
# a PostgreSQL server started for the module and lease periods waited out: about 15 s, out of the fast lane
pytestmark = pytest.mark.slow

REQUEST = {"instances": [[1, 2]], "parameters": {}, "timeout_s": None}
NO_BEAT_S = 600.0  # a lease so long that no heartbeat fires during a test: a "crash" is then an expired lease


def req(i: int) -> dict[str, Any]:
    return {**REQUEST, "instances": [[i, 2]]}




class Backend:
    """Opens stores on one database, and "crashes" one: its process died holding the jobs it was running."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where, self.stores = kind, where, []

    def open(self) -> Any:
        self.stores.append(open_job_store(self.where, NO_BEAT_S))
        return self.stores[-1]

    def crash(self, store: Any) -> None:
        if self.kind == "postgres":  # a dead replica renews nothing: its leases run out
            postgres.run_sql(self.where, "UPDATE deepseek_serve_jobs SET lease_until = clock_timestamp() - INTERVAL '1 second' "
                "WHERE owner=%s", store.owner)  # fmt: skip
        # SQLite: one process owns the file; the next store's recover() re-queues every running job

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path):
    where = str(tmp_path / "jobs.sqlite") if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    b = Backend(request.param, where)
    yield b
    b.close()


def test_a_job_goes_queued_running_and_final_once(backend: Backend):
    store = backend.open()
    job_id = store.submit("m", "1", REQUEST)
    assert store.get(job_id)["status"] == "queued" and store.get(job_id)["attempts"] == 0
    job = store.claim()
    assert job["id"] == job_id and job["status"] == "running" and job["request"] == REQUEST
    assert job["attempts"] == 1 and job["isolate"] is False and store.claim() is None
    assert store.counts() == {"queued": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert store.finish(job_id, result=[[2.0, 4.0]]) is True
    assert store.finish(job_id, result="again") is False  # final: never overwritten
    done = store.get(job_id)
    assert done["status"] == "succeeded" and done["result"] == [[2.0, 4.0]] and done["finished"] >= done["started"]
    failing, running, queued = (store.submit("m", None, req(i)) for i in range(3))
    assert store.claim()["id"] == failing and store.claim()["id"] == running
    assert store.finish(failing, error="500: boom") and store.get(failing)["error"] == "500: boom"
    assert store.cancel(running) == "cancelled" and store.finish(running, result=1) is False
    assert store.cancel(queued) == "cancelled" and store.claim() is None
    assert store.cancel("nope") is None and store.get("nope") is None
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 2}


def test_an_idempotency_key_names_one_job_of_one_request(backend: Backend):
    store = backend.open()
    job_id, made = store.submit_once("m", "1", REQUEST, "key-1")
    reordered = {"timeout_s": None, "parameters": {}, "instances": [[1, 2]]}
    assert made and store.submit_once("m", "1", reordered, "key-1") == (job_id, False)
    assert store.find_key("m", "1", REQUEST, "key-1") == job_id and store.find_key("m", "1", REQUEST, "k2") is None
    with pytest.raises(IdempotencyConflict, match="'key-1' was used for job"):
        store.submit_once("m", "1", req(7), "key-1")
    assert store.submit_once("m", "1", REQUEST, None)[1] and store.get(job_id)["idempotency_key"] == "key-1"


def test_recover_charges_a_crash_only_to_a_job_that_ran_alone(backend: Backend):
    first = backend.open()
    a, b = first.submit("m", "1", req(1)), first.submit("m", "1", req(2))
    assert [first.claim()["id"], first.claim()["id"]] == [a, b]  # a and b run together; then the server dies
    backend.crash(first)
    second = backend.open()
    assert second.recover(2) == (2, 0)  # either may have killed it: neither is charged, both run alone
    assert [(j["status"], j["crashes"]) for j in map(second.get, (a, b))] == [("queued", 0)] * 2
    job = second.claim()
    assert job["id"] == a and job["isolate"] and job["attempts"] == 2
    assert second.claim() is None  # nothing starts beside a job that runs alone
    backend.crash(second)
    third = backend.open()
    assert third.recover(2) == (1, 0) and third.get(a)["crashes"] == 1  # it crashed the server alone
    assert third.claim()["id"] == a
    backend.crash(third)
    fourth = backend.open()
    assert fourth.recover(2) == (0, 1)
    failed = fourth.get(a)
    assert failed["status"] == "failed" and "crashed the server 2 times (max_job_attempts 2)" in failed["error"]
    job = fourth.claim()
    assert job["id"] == b and job["isolate"] and fourth.finish(b, result=[[3.0]])


def test_open_job_store_names_an_unreachable_database_without_its_password(tmp_path: Path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ValueError) as info:
        open_job_store(f"postgres://bob:s3cret@127.0.0.1:{port}/jobs?sslmode=disable", 5)
    message = str(info.value)
    assert "\n" not in message and "s3cret" not in message
    assert message.startswith(f"cannot open the PostgreSQL job store postgresql://bob:***@127.0.0.1:{port}/jobs")
    sqlite = open_job_store(tmp_path / "jobs.sqlite", 5)  # a path is SQLite, as before
    assert isinstance(sqlite, JobStore)
    sqlite.close()


def test_two_stores_with_threads_claim_each_job_exactly_once(postgres_url: str):
    with ThreadPoolExecutor(2) as pool:  # replicas start together: the schema is made once, under a lock
        stores = list(pool.map(lambda _: open_job_store(postgres_url, NO_BEAT_S), range(2)))
    try:
        ids = [stores[0].submit("m", "1", req(i)) for i in range(40)]
        claimed: list[str] = []

        def work(store: Any) -> None:
            while (job := store.claim()) is not None:
                claimed.append(job["id"])
                assert store.finish(job["id"], result=job["request"]["instances"])

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(work, [stores[0], stores[1]] * 3))
        assert sorted(claimed) == sorted(ids)  # every job once: none lost, none twice
        assert {stores[1].get(i)["attempts"] for i in ids} == {1}
        assert stores[1].counts()["succeeded"] == 40
        owners = Counter(owner for (owner,) in postgres.run_sql(postgres_url, "SELECT owner FROM deepseek_serve_jobs"))
        assert set(owners) == {stores[0].owner, stores[1].owner}  # both claimed some
    finally:
        for store in stores:
            store.close()


def test_recover_and_claim_leave_a_live_replicas_job_alone(postgres_url: str):
    live, other = open_job_store(postgres_url, 0.6), open_job_store(postgres_url, NO_BEAT_S)
    try:
        job_id = live.submit("m", "1", REQUEST)
        assert live.claim()["id"] == job_id

        def outlived_its_lease_five_times() -> bool:  # on the database's clock, which the leases use
            assert other.recover() == (0, 0) and other.claim() is None  # the heartbeat keeps the lease live
            job = other.get(job_id)
            assert (job["status"], job["attempts"]) == ("running", 1)
            ((age,),) = postgres.run_sql(postgres_url, "SELECT EXTRACT(EPOCH FROM clock_timestamp()) - %s", job["started"])
            return float(age) > 5 * live.lease_s

        postgres.poll(outlived_its_lease_five_times, what="the job to run for 5 leases")
        assert live.finish(job_id, result=[[1]]) and other.get(job_id)["attempts"] == 1
    finally:
        live.close()
        other.close()


KILLED_REPLICA = """
import sys
from deepseek.serve.jobs import open_job_store
store = open_job_store(sys.argv[1], float(sys.argv[2]))
print("claimed", store.claim()["id"], flush=True)
sys.stdin.readline()  # hold the job (the heartbeat renews its lease) until killed
"""


def test_a_killed_replicas_job_is_taken_over_once_its_lease_expires(postgres_url: str):
    survivor = open_job_store(postgres_url, NO_BEAT_S)
    job_id = survivor.submit("m", "1", REQUEST)
    proc = process_tree.popen([sys.executable, "-c", KILLED_REPLICA, postgres_url, "1.0"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().split() == ["claimed", job_id]
        assert survivor.claim() is None  # its lease is live
        proc.kill()  # kill -9: no close(), no release; the lease runs out
        proc.wait(30)
        job = postgres.poll(survivor.claim, what="the take-over of the killed replica's job")
        assert (job["id"], job["attempts"], job["isolate"], job["crashes"]) == (job_id, 2, True, 0)
        assert survivor.finish(job_id, result=[[3.0]]) and survivor.get(job_id)["status"] == "succeeded"
    finally:
        process_tree.kill_tree(proc)
        survivor.close()


def test_a_replica_that_lost_its_lease_cannot_finish_the_job(postgres_url: str):
    stale, fresh = open_job_store(postgres_url, NO_BEAT_S), open_job_store(postgres_url, NO_BEAT_S)
    try:
        job_id = stale.submit("m", "1", REQUEST)
        assert stale.claim()["id"] == job_id
        # the stale replica paused longer than its lease (its heartbeat could not reach the database)
        postgres.run_sql(postgres_url, "UPDATE deepseek_serve_jobs SET lease_until = clock_timestamp() - INTERVAL '1 second'")
        rerun = fresh.claim()
        assert (rerun["id"], rerun["attempts"]) == (job_id, 2)
        assert stale.finish(job_id, result="stale") is False  # the rerun's owner holds it now
        assert fresh.finish(job_id, result="fresh") is True and stale.get(job_id)["result"] == "fresh"
    finally:
        stale.close()
        fresh.close()


def test_two_replicas_racing_with_one_idempotency_key_make_one_job(postgres_url: str):
    stores = [open_job_store(postgres_url, NO_BEAT_S) for _ in range(2)]
    try:
        start = threading.Barrier(8)

        def submit(i: int) -> tuple[str, bool]:
            start.wait(30)
            return stores[i % 2].submit_once("m", "1", REQUEST, "retry-key")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(submit, range(8)))
        assert len({job_id for job_id, _ in results}) == 1 and sum(made for _, made in results) == 1
        assert stores[0].counts()["queued"] == 1
    finally:
        for store in stores:
            store.close()


def test_a_replica_stopping_gracefully_hands_its_running_jobs_back_uncharged(postgres_url: str):
    stopping, other = open_job_store(postgres_url, NO_BEAT_S), open_job_store(postgres_url, NO_BEAT_S)
    try:
        job_id = stopping.submit("m", "1", REQUEST)
        assert stopping.claim()["id"] == job_id
        stopping.close()  # Server.stop(): no lease to wait out, and no crash to charge
        job = other.claim()
        assert (job["id"], job["attempts"], job["isolate"], job["crashes"]) == (job_id, 2, False, 0)
    finally:
        other.close()
