"""The job store off the event loop, the attempts cap, and the Client's input conversion, in process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from deepseek.serve import Client, InputSpec, ServedModel, ServeSettings, TensorSpec, create_app
from deepseek.serve.jobs import JobStore


class Doubler(torch.nn.Module):
    """(N, 2) -> (N, 2): twice the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def wait_ready(client: TestClient) -> None:
    """Poll /readyz until the warm-up is done (503 before), or fail after 30 s."""
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the app did not become ready"
        time.sleep(0.02)


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    with TestClient(create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=1))) as client:
        wait_ready(client)
        yield client


def test_job_store_writes_run_off_the_event_loop(tmp_path, monkeypatch):
    on_loop: list[str] = []  # methods called from a thread that runs an event loop: they would stall it

    def watch(name: str) -> None:
        original = getattr(JobStore, name)

        def watched(self, *args, **kwargs):
            try:
                asyncio.get_running_loop()
                on_loop.append(name)
            except RuntimeError:
                pass
            return original(self, *args, **kwargs)

        monkeypatch.setattr(JobStore, name, watched)

    for name in ("__init__", "recover", "submit", "submit_once", "find_key", "claim", "finish", "cancel", "get",
                 "counts", "close"):  # fmt: skip
        watch(name)
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    with TestClient(create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=1))) as client:
        wait_ready(client)
        r = client.post("/v1/models/double/jobs", json={"instances": [[1, 2]]}, headers={"Idempotency-Key": "k"})
        assert r.status_code == 202
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] != "succeeded":
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        assert job["result"] == [[2.0, 4.0]]
        queued = client.post("/v1/models/double/jobs", json={"instances": [[1, 2]]}).json()["id"]
        client.delete(f"/v1/jobs/{queued}")  # cancelled or already done: either way a store call
        assert "ds_serve_jobs" in client.get("/metrics").text
    assert on_loop == []


def test_a_blocked_job_write_does_not_stall_health_checks(app_client, monkeypatch):
    release, entered = threading.Event(), threading.Event()
    original = JobStore.submit_once

    def blocked_submit(self, *args, **kwargs):
        entered.set()
        release.wait(30)  # a slow fsync
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JobStore, "submit_once", blocked_submit)
    with ThreadPoolExecutor(2) as pool:
        submitted = pool.submit(app_client.post, "/v1/models/double/jobs", json={"instances": [[1, 2]]})
        assert entered.wait(30)
        health = pool.submit(app_client.get, "/healthz")
        try:
            assert health.result(timeout=10).json() == {"status": "ok"}  # answered while the write is blocked
            assert not submitted.done()
        finally:
            release.set()
        assert submitted.result(timeout=30).status_code == 202


def test_recover_charges_only_a_crash_during_an_isolated_run(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    first, poison, last = (store.submit("m", "1", {"instances": [i]}) for i in range(3))
    while store.claim() is not None:  # all three run together (one batch) when the server dies
        pass
    assert store.recover(max_attempts=1) == (3, 0)  # nobody knows which one killed it: none is charged
    job = store.claim()
    assert job["id"] == first and job["isolate"]
    assert store.claim() is None  # an interrupted job runs alone: nothing starts beside it
    store.finish(first, result=[0])
    job = store.claim()
    assert job["id"] == poison and job["isolate"] and store.claim() is None
    assert store.recover(max_attempts=1) == (0, 1)  # it killed the server running alone: charged, and capped
    job = store.claim()
    assert job["id"] == last and job["isolate"]
    store.finish(last, result=[2])
    assert [store.get(j)["status"] for j in (first, poison, last)] == ["succeeded", "failed", "succeeded"]
    failed = store.get(poison)
    assert failed["attempts"] == 2 and failed["crashes"] == 1
    assert "crashed the server 1 times (max_job_attempts 1)" in failed["error"]
    store.close()


def test_jobs_interrupted_together_all_finish_after_a_restart(tmp_path, monkeypatch):
    from deepseek.serve.batching import Batcher

    store = JobStore(tmp_path / "jobs.sqlite")
    jobs = [store.submit("double", "1", {"instances": [[i, 1]]}) for i in range(3)]
    while store.claim() is not None:  # running together when the "server" died
        pass
    store.close()
    batched: list[int] = []
    original = Batcher.submit

    async def submit(self, samples, params):
        batched.append(len(samples))
        return await original(self, samples, params)

    monkeypatch.setattr(Batcher, "submit", submit)
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    settings = ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=3, max_job_attempts=1)
    with TestClient(create_app([m], settings)) as client:
        wait_ready(client)
        done = [wait_job(client, j) for j in jobs]
    assert [j["status"] for j in done] == ["succeeded"] * 3, done  # max_job_attempts 1 charged none of them
    assert [j["result"] for j in done] == [[[0.0, 2.0]], [[2.0, 2.0]], [[4.0, 2.0]]]
    assert [j["attempts"] for j in done] == [2, 2, 2] and [j["crashes"] for j in done] == [0, 0, 0]
    assert batched == []  # each re-run had a forward pass of its own, never the shared batcher


def wait_job(client: TestClient, job_id: str) -> dict:
    """Poll the job until it is final, or fail after 30 s."""
    deadline = time.monotonic() + 30
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def test_an_idempotency_key_makes_a_retried_submission_return_the_same_job(app_client):
    key = {"Idempotency-Key": "order-17"}
    first = app_client.post("/v1/models/double/jobs", json={"instances": [[1, 2]]}, headers=key)
    assert first.status_code == 202
    again = app_client.post("/v1/models/double/jobs", json={"instances": [[1, 2]], "parameters": {}}, headers=key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/v1/jobs/{first.json()['id']}"
    other = app_client.post("/v1/models/double/jobs", json={"instances": [[3, 4]]}, headers=key)
    assert other.status_code == 409
    assert f"Idempotency-Key 'order-17' was used for job {first.json()['id']}" in other.json()["error"]
    job = wait_job(app_client, first.json()["id"])
    assert job["idempotency_key"] == "order-17" and job["attempts"] == 1 and job["result"] == [[2.0, 4.0]]
    assert sum(app_client.app.app.state.server.store.counts().values()) == 1  # one job, not two
    c = Client()
    c.http = app_client
    assert c.submit("double", [[5, 6]], idempotency_key="k2") == c.submit("double", [[5, 6]], idempotency_key="k2")
    too_long = app_client.post("/v1/models/double/jobs", json={"instances": [[1, 2]]}, headers={"Idempotency-Key": "k" * 201})
    assert too_long.status_code == 422 and "Idempotency-Key" in too_long.json()["error"]


def test_a_job_db_of_an_older_server_gains_the_idempotency_key(tmp_path):
    import sqlite3

    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:  # the schema before idempotency keys and isolated re-runs
        db.executescript(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, model TEXT NOT NULL, version TEXT, status TEXT NOT NULL, "
            "request TEXT NOT NULL, result TEXT, error TEXT, created REAL NOT NULL, started REAL, finished REAL, "
            "attempts INTEGER NOT NULL DEFAULT 0);"
            "INSERT INTO jobs (id, model, version, status, request, created, attempts) "
            "VALUES ('old', 'm', '1', 'running', '{\"instances\": [1]}', 1.0, 1);"
        )
    store = JobStore(path)
    assert store.recover(max_attempts=1) == (1, 0)  # an old row is readable, and not charged
    assert store.get("old")["status"] == "queued"
    job_id, made = store.submit_once("m", "1", {"instances": [2]}, "k")
    assert made and store.submit_once("m", "1", {"instances": [2]}, "k") == (job_id, False)
    with pytest.raises(sqlite3.IntegrityError):  # the key is unique in the table itself
        store.db.execute("UPDATE jobs SET idempotency_key='k' WHERE id='old'")
    store.close()


def test_client_predict_accepts_tensors_and_arrays(app_client):
    c = Client()
    c.http = app_client  # a TestClient is an httpx.Client bound to the app
    want = [[2.0, 4.0], [6.0, 8.0]]
    assert c.predict("double", torch.tensor([[1.0, 2.0], [3.0, 4.0]])) == want
    assert c.predict("double", np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)) == want
    assert c.predict("double", [torch.tensor([1.0, 2.0]), np.array([3.0, 4.0])]) == want
    job = c.submit("double", torch.tensor([[1.0, 2.0]]))
    assert c.wait(job, timeout=30)["result"] == [[2.0, 4.0]]


@pytest.mark.slow  # a fresh process or server: kept out of the fast lane
def test_max_job_attempts_below_one_is_refused(tmp_path):
    from tests.conftest import run_cli

    r = run_cli("serve", "--model_dir", str(tmp_path), "--max-job-attempts", "0")
    assert r.returncode == 2 and "--max-job-attempts: 0 is not allowed; it must be >= 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_model_setting_overrides_max_job_attempts(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.submit("double", "1", {"instances": [[1, 2]]})
    store.claim()  # running with others when the "server" died: not charged, but it runs alone from now on
    assert store.recover() == (1, 0)
    assert store.claim()["isolate"]  # running alone when the "server" died again: this crash is its own
    store.close()
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    m.settings = {"max_job_attempts": 1}  # serve.yaml's per-model max_job_attempts; the server default is 3
    with TestClient(create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite"))) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and "crashed the server 1 times (max_job_attempts 1)" in job["error"]


def test_shutdown_ends_even_when_wait_for_swallows_the_cancel(tmp_path, monkeypatch):
    import deepseek.serve.server as app_module

    original = asyncio.wait_for

    async def swallowing_wait_for(aw, timeout):  # Python 3.11's wait_for when a cancel lands as its wait ends
        try:
            return await original(aw, timeout)
        except asyncio.CancelledError:
            return None

    monkeypatch.setattr(app_module.asyncio, "wait_for", swallowing_wait_for)
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    client = TestClient(create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=2)))
    client.__enter__()
    wait_ready(client)
    stopper = threading.Thread(target=client.__exit__, args=(None, None, None), daemon=True)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive(), "the app did not shut down: a job worker ignored its cancellation"


def test_an_idempotency_key_matches_the_same_numbers_sent_as_json_floats_or_protobuf_values(tmp_path):
    # REST's JSON keeps 1 and 1.0 apart; gRPC's google.protobuf.Value holds every number as a double, read back
    # as an int when whole. A retry of one request over the other transport is still the same request.
    store = JobStore(tmp_path / "jobs.db")
    rest = {"instances": [[1.0, 2.5, 0.0]], "parameters": {"top_k": 3}}
    grpc = {"instances": [[1, 2.5, 0]], "parameters": {"top_k": 3.0}}
    first, made = store.submit_once("m", "1", rest, "k")
    again, made_again = store.submit_once("m", "1", grpc, "k")
    assert (made, made_again, again) == (True, False, first)
    with pytest.raises(ValueError, match="different"):  # a different value is still a different request
        store.submit_once("m", "1", {"instances": [[1, 2.5, 0.5]], "parameters": {"top_k": 3}}, "k")
