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

    for name in ("__init__", "recover", "submit", "claim", "finish", "cancel", "get", "counts", "close"):
        watch(name)
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    with TestClient(create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=1))) as client:
        wait_ready(client)
        r = client.post("/v1/models/double/jobs", json={"instances": [[1, 2]]})
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
    original = JobStore.submit

    def blocked_submit(self, *args, **kwargs):
        entered.set()
        release.wait(30)  # a slow fsync
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JobStore, "submit", blocked_submit)
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


def test_recover_fails_a_job_that_crashed_the_server_too_often(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    crashing, fine = store.submit("m", "1", {"instances": [1]}), store.submit("m", "1", {"instances": [2]})
    outcomes = []
    for _ in range(3):  # each start finds what it claimed still running: the server died running it
        while store.claim() is not None:
            pass
        if store.get(fine)["attempts"] == 2:
            store.finish(fine, result=[0])  # the second try of this one got through
        outcomes.append(store.recover(max_attempts=3))
    assert outcomes == [(2, 0), (1, 0), (0, 1)]  # (re-queued, failed)
    assert store.get(fine)["status"] == "succeeded"
    job = store.get(crashing)
    assert job["status"] == "failed" and job["attempts"] == 3
    assert "crashed the server 3 times" in job["error"]
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


def test_max_job_attempts_below_one_is_refused(tmp_path):
    from tests.conftest import run_cli

    r = run_cli("serve", "--model_dir", str(tmp_path), "--max-job-attempts", "0")
    assert r.returncode == 2 and "--max-job-attempts: 0 is not allowed; it must be >= 1" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_model_setting_overrides_max_job_attempts(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    job_id = store.submit("double", "1", {"instances": [[1, 2]]})
    store.claim()  # running when the "server" died: one attempt
    store.close()
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    m.settings = {"max_job_attempts": 1}  # serve.yaml's per-model max_job_attempts; the server default is 3
    with TestClient(create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite"))) as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and "crashed the server 1 times (max_job_attempts 1)" in job["error"]
