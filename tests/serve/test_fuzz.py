"""Schemathesis against a live uvicorn on 127.0.0.1: request bodies, headers and parameters made from the
server's own OpenAPI document, and every answer checked against it (no 5xx, documented status, content type,
headers and body schema). Bounded: a few dozen examples per operation, a few seconds in all."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from deepseek.serve import InputSpec, ServedModel, ServeSettings, TensorSpec, create_app
from tests.serve.test_jobs import Doubler

EXAMPLES = 10  # per operation and mode: about 300 requests in all, under 10 s


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    jobs_db = Path(tmp_path_factory.mktemp("fuzz")) / "jobs.sqlite"
    app = create_app([m], ServeSettings(jobs_db=jobs_db, job_workers=1, max_body_bytes=64 * 1024))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port from the OS; connections wait in the backlog until uvicorn serves
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while httpx.get(url + "/readyz", timeout=30).status_code != 200:  # 503 while warming up
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.02)
    yield url
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.mark.slow
def test_every_answer_conforms_to_the_openapi_document(live_url):
    schema = schemathesis.openapi.from_url(live_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    for op in operations:
        for mode in GenerationMode:
            if not mode.is_positive and not (op.body or op.path_parameters or op.query or op.headers):
                continue  # nothing to break
            strategy = op.as_strategy(mode)
            if mode.is_positive and "{name}" in op.path:  # also reach the model itself, not only its 404
                real = {"name": "double", **({"version": "1"} if "{version}" in op.path else {})}
                strategy = st.one_of(strategy, op.as_strategy(mode, path_parameters=real))
                if op.body:  # and with instances that fit its input spec, float32[2]: the model answers
                    check_answers(st.tuples(op.as_strategy(mode, path_parameters=real), FITTING).map(fit))
            try:
                check_answers(strategy)
            except Unsatisfiable:
                if mode.is_positive:
                    raise  # negative: only string parameters, which no value breaks (e.g. GET /v1/jobs/{job_id})
    metrics = httpx.get(live_url + "/metrics").text
    answered = sum(float(n) for n in re.findall(r"^ds_serve_requests_total\{.*\} (\S+)$", metrics, re.M))
    assert answered >= 100, metrics  # it did send requests
    for code, route in (("200", "predict"), ("202", "jobs"), ("200", "stream")):  # the model answered too
        assert f'ds_serve_requests_total{{code="{code}",model="double",route="/v1/models/{{name}}/{route}"}}' in metrics


FITTING = st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=2), min_size=1, max_size=4)


def fit(case_and_instances: tuple) -> object:
    case, instances = case_and_instances
    if isinstance(case.body, dict):  # parameters and timeout_s are fuzzed by the other strategies
        case.body = {"instances": instances}
    if case.query:
        case.query = {}  # ?version=<random> would be a 404
    return case


def check_answers(strategy) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case) -> None:
        response = case.call()
        # positive_data_acceptance is left out on purpose: `instances` is any JSON list in the document, while
        # what fits depends on the model (GET /v1/models/{name} describes it), so a schema-valid list may be 422
        case.validate_response(response, excluded_checks=[positive_data_acceptance, not_a_server_error])
        budget = case.body.get("timeout_s") if isinstance(case.body, dict) else None
        too_short = response.status_code == 504 and isinstance(budget, float) and budget < 1.0  # e.g. 5e-324 s
        assert response.status_code < 500 or too_short, (response.status_code, response.text, case.body)

    check()
