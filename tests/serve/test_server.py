"""The three modes, batching, metrics and every refusal, against a real server process on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from deepseek.serve import ServeError
from tests.serve.conftest import ServerProcess, digits_samples


def test_predict_matches_the_trained_model_in_torch_and_onnx(server, model_dir):
    from deepseek.config import load_config
    from deepseek.train.build import build_model, load_trained_weights

    x, _ = digits_samples(6)
    cfg = load_config(model_dir / "digits" / "config.yaml")
    model = load_trained_weights(build_model(cfg), model_dir / "digits" / "final" / "model.safetensors").eval()
    with torch.no_grad():
        want = model(torch.tensor(x)).softmax(-1)
    with server.client() as c:
        for version in (None, "onnx"):
            got = c.predict("digits", x, version=version)
            assert [p["index"] for p in got] == want.argmax(-1).tolist()
            assert [p["label"] for p in got] == [str(i) for i in want.argmax(-1).tolist()]
            torch.testing.assert_close(torch.tensor([p["scores"] for p in got]), want, atol=1e-4, rtol=0)
        listed = {(m["name"], m["version"]) for m in c.models()}
    assert {("digits", "1"), ("digits", "onnx"), ("gpt2", "1"), ("probe", "1")} <= listed


def test_job_lifecycle_and_cancel(server):
    x, _ = digits_samples(3)
    with server.client() as c:
        job = c.submit("digits", x)
        done = c.wait(job)
        assert done["status"] == "succeeded" and done["result"] == c.predict("digits", x)
        with pytest.raises(ServeError) as e:
            c.cancel(job)
        assert e.value.status == 409
        busy = c.submit("slow", [[-1, 1.5, 0, 0]])  # occupies the slow model's job for 1.5 s
        queued = [c.submit("slow", [[1, 2, 3, 4]]) for _ in range(2)]
        assert c.cancel(queued[-1])["status"] == "cancelled"
        assert c.wait(busy)["status"] == "succeeded" and c.wait(queued[0])["status"] == "succeeded"
        assert c.job(queued[-1])["status"] == "cancelled" and "result" not in c.job(queued[-1])
        with pytest.raises(ServeError) as e:
            c.job("no-such-job")
        assert e.value.status == 404
        with pytest.raises(ServeError) as e:  # refused at submission, not failed later
            c.submit("digits", [[1, 2]])
        assert e.value.status == 422


def test_stream_sends_tokens_as_they_come_and_matches_generate(server):
    with server.client() as c:
        events = list(c.stream("gpt2", "the weather today is", {"max_new_tokens": 6}))
        tokens, done = events[:-1], events[-1]
        assert [e["event"] for e in tokens] == ["token"] * 6 and done["event"] == "done"
        assert [e["index"] for e in tokens] == list(range(6))
        assert done["token_ids"] == [e["token_id"] for e in tokens]
        assert done["text"] and all("text" in e for e in tokens)
        (greedy,) = c.predict("gpt2", ["the weather today is"], {"max_new_tokens": 6})
        assert greedy["token_ids"] == done["token_ids"]
        x, _ = digits_samples(3)
        chunks = list(c.stream("digits", x, chunks=True))
        assert [e["event"] for e in chunks] == ["result"] * 3 + ["done"]
        # one sample per forward against a batch of three: the same labels, scores equal to rounding
        streamed, batched = [e["prediction"] for e in chunks[:3]], c.predict("digits", x)
        assert [p["label"] for p in streamed] == [p["label"] for p in batched]
        for a, b in zip(streamed, batched, strict=True):
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
        with pytest.raises(ServeError) as e:
            list(c.stream("gpt2", "hi", {"max_new_tokens": 500}))
        assert e.value.status == 422 and "max_new_tokens" in e.value.message


def test_concurrent_requests_share_one_forward_pass(server):
    with server.client() as c, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: c.predict("probe", [[i, 1, 1, 1]])[0], range(8)))
        metrics = httpx.get(server.url + "/metrics").text
    assert [r[0] for r in results] == [i + 3 for i in range(8)]  # each request got its own row back
    assert max(r[1] for r in results) > 1, "no two requests ran in one batch"
    count = re.search(r'ds_serve_batch_size_count\{model="probe"\} (\S+)', metrics)
    assert count and float(count.group(1)) < 8  # fewer forward passes than requests
    assert 'ds_serve_requests_total{code="200",model="probe",route="/v1/models/{name}/predict"} 8.0' in metrics
    for name in ("ds_serve_request_seconds_bucket", "ds_serve_queue_depth", 'ds_serve_jobs{state="succeeded"}'):
        assert name in metrics


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"instances": [[[0.0] * 8] * 7]}, 422, "expected shape float32[1, 8, 8]"),  # wrong shape
        ({"instances": [[[["a"] * 8] * 8]]}, 422, "nested list of numbers"),  # wrong dtype
        ({"instances": ["a digit"]}, 422, "nested list of numbers"),
        ({"parameters": {}}, 422, "instances: Field required"),  # missing field
        ({"instances": []}, 422, "non-empty list"),
        ({"instances": [[[[0.0] * 8] * 8]] * 65}, 422, "at most 64 samples"),
        ({"instances": [[[[float("nan")] * 8] * 8]]}, 422, "NaN"),
        ({"instances": [[[[0.0] * 8] * 8]], "parameters": {"temperature": 1}}, 422, "unknown ['temperature']"),
        ("{not json", 422, "JSON decode error"),
        ({"instances": [[[[0.0] * 8] * 8]] * 5000}, 413, "over the 262144-byte limit"),  # a 0.25 MiB limit
    ],
)
def test_bad_input_is_refused_with_a_message(server, body, status, says):
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(
        server.url + "/v1/models/digits/predict", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    assert says in r.json()["error"]


def test_unknown_model_and_version_are_404(server):
    r = httpx.post(server.url + "/v1/models/nope/predict", json={"instances": [1]})
    assert r.status_code == 404 and "served: digits, gpt2, probe, slow" in r.json()["error"]
    r = httpx.post(server.url + "/v1/models/digits/versions/9/predict", json={"instances": [1]})
    assert r.status_code == 404 and "has no version '9'" in r.json()["error"]
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_full_queue_timeout_and_model_error_leave_the_server_serving(server):
    url = server.url + "/v1/models/slow/predict"
    with ThreadPoolExecutor(4) as pool:
        slow = [pool.submit(httpx.post, url, json={"instances": [[-1, 1.0, 0, 0]]}, timeout=30) for _ in range(4)]
        codes = sorted(f.result().status_code for f in slow)
        refused = [f.result() for f in slow if f.result().status_code == 429]
    assert codes.count(200) == 2 and codes.count(429) == 2  # max_queue: 2
    assert int(refused[0].headers["retry-after"]) >= 1
    r = httpx.post(url, json={"instances": [[-1, 2.0, 0, 0]], "timeout_s": 0.3}, timeout=30)
    assert r.status_code == 504 and "0.3 s time budget" in r.json()["error"]
    r = httpx.post(server.url + "/v1/models/probe/predict", json={"instances": [[13, 0, 0, 0]]})
    assert r.status_code == 500 and "ValueError: unlucky 13" in r.json()["error"]
    r = httpx.post(server.url + "/v1/models/probe/predict", json={"instances": [[1, 2, 3, 4]]})
    assert r.status_code == 200 and r.json()["predictions"] == [[10.0, 1.0]]


def test_a_failing_request_in_a_batch_fails_alone(server):
    url = server.url + "/v1/models/probe/predict"
    with ThreadPoolExecutor(6) as pool:
        out = list(pool.map(lambda i: httpx.post(url, json={"instances": [[13 if i == 2 else i, 0, 0, 0]]}), range(6)))
    assert [r.status_code for r in out] == [200, 200, 500, 200, 200, 200]


def test_health_docs_and_openapi(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.get(server.url + "/docs").status_code == 200
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert {
        "/v1/models/{name}/predict",
        "/v1/models/{name}/jobs",
        "/v1/models/{name}/stream",
        "/v1/jobs/{job_id}",
    } <= set(paths)


@pytest.mark.slow  # a fresh process or server: kept out of the fast lane
def test_api_key(model_dir, tmp_path):
    s = ServerProcess(
        model_dir, "--jobs-db", str(tmp_path / "jobs.sqlite"), env={"DEEPSEEK_SERVE_API_KEY": "s3cret"}
    ).start()
    try:
        x, _ = digits_samples(1)
        r = httpx.post(s.url + "/v1/models/digits/predict", json={"instances": x})
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert httpx.get(s.url + "/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
        assert httpx.get(s.url + "/healthz").status_code == 200  # probes stay open
        with s.client(api_key="s3cret") as c:
            assert c.predict("digits", x)[0]["label"]
            metrics = c.http.get("/metrics").text
        assert 'ds_serve_requests_total{code="401",model="",route="refused"} 2.0' in metrics
    finally:
        s.kill(signal.SIGTERM)


@pytest.mark.slow
def test_a_killed_server_finishes_accepted_jobs_after_restart(model_dir, tmp_path):
    db = str(tmp_path / "jobs.sqlite")
    s = ServerProcess(model_dir, "--jobs-db", db).start()
    with s.client() as c:
        running = c.submit("slow", [[-1, 30, 0, 0]])  # would take 30 s
        waiting = c.submit("slow", [[1, 2, 3, 4]])
        deadline = time.monotonic() + 30
        while c.job(running)["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    s.kill(signal.SIGKILL)
    import sqlite3

    with sqlite3.connect(db) as db_conn:  # rewrite the slow job to a fast one: only its recovery is tested
        db_conn.execute("UPDATE jobs SET request=? WHERE id=?", (json.dumps({"instances": [[-1, 0.1, 0, 0]]}), running))
    s = ServerProcess(model_dir, "--jobs-db", db).start()
    try:
        with s.client() as c:
            first, second = c.wait(running, timeout=60), c.wait(waiting, timeout=60)
        assert first["status"] == "succeeded" and first["attempts"] == 2
        assert second["status"] == "succeeded" and second["result"] == [[10.0, 1.0]]
    finally:
        s.kill(signal.SIGTERM)


def test_the_readme_stream_snippet_prints_each_token_once(server, capsys):
    from tests.conftest import REPO

    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "serve.md").read_text(), re.S)  # moved from README
    block = next(b for b in blocks if "client.stream(" in b)  # the REST example (the gRPC one follows it)
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if "for event in client.stream(" in line)
    indent = len(lines[start]) - len(lines[start].lstrip())
    loop = [lines[start]] + [line for line in lines[start + 1 :] if len(line) - len(line.lstrip()) > indent]
    snippet = "\n".join(line[indent:] for line in loop)
    with server.client() as client:
        exec(snippet, {"client": client})  # the README's loop, as written
        printed = capsys.readouterr().out
        events = list(client.stream("gpt2", "the weather today is", {"max_new_tokens": 20}))
    tokens = "".join(e["text"] for e in events if e["event"] == "token")
    assert tokens and printed == tokens


@pytest.mark.slow
def test_a_job_that_kills_the_server_every_time_fails_after_max_attempts(model_dir, tmp_path):
    db = str(tmp_path / "jobs.sqlite")
    crashing = ""
    # the job "crashes" the server: it is killed each time while running it. The first run shared the server
    # with whatever else ran (not charged); the next two ran alone, and are the 2 crashes max_job_attempts allows
    for attempt in (1, 2, 3):
        s = ServerProcess(model_dir, "--jobs-db", db, "--max-job-attempts", "2").start()
        with s.client() as c:
            if attempt == 1:
                crashing = c.submit("slow", [[-1, 30, 0, 0]])  # would take 30 s: killed long before
            deadline = time.monotonic() + 30
            while (job := c.job(crashing))["status"] != "running" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert job["status"] == "running" and job["attempts"] == attempt
        s.kill(signal.SIGKILL)
    s = ServerProcess(model_dir, "--jobs-db", db, "--max-job-attempts", "2").start()
    try:
        with s.client() as c:
            failed = c.job(crashing)  # failed on start-up, not run a fourth time
            assert failed["status"] == "failed" and failed["attempts"] == 3 and failed["crashes"] == 2
            assert "crashed the server 2 times" in failed["error"]
            after = c.wait(c.submit("slow", [[1, 2, 3, 4]]), timeout=60)  # the queue goes on
        assert after["status"] == "succeeded" and after["result"] == [[10.0, 1.0]]
    finally:
        s.kill(signal.SIGTERM)
