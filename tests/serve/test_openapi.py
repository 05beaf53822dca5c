"""The server in process: non-finite JSON numbers, the OpenAPI document against what the server does, offline docs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deepseek.serve import InputSpec, ServedModel, ServeSettings, TensorSpec, create_app
from tests.serve.test_jobs import Doubler, wait_ready

MODES = ("predict", "jobs", "stream")


def make_client(tmp_path: Path, **settings) -> TestClient:
    m = ServedModel("double", "1", Doubler(), InputSpec({"x": TensorSpec([2])}), "test")
    app = create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=1, **settings))
    return TestClient(app, raise_server_exceptions=False)  # a handler that raises must show up as the 500 it is


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with make_client(tmp_path) as c:
        wait_ready(c)
        yield c


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "body, where",
    [
        ('{"instances": [[1, 2]], "timeout_s": NaN}', "timeout_s"),
        ('{"instances": [[1, 2]], "timeout_s": Infinity}', "timeout_s"),
        ('{"instances": [[1, 2]], "parameters": NaN}', "parameters"),
        ('{"instances": [[1, 2]], "unknown": -Infinity}', "unknown"),
        ('{"instances": NaN}', "instances"),
    ],
)
def test_non_finite_numbers_outside_instances_are_422_with_a_message(client, mode, body, where):
    r = client.post(f"/v1/models/double/{mode}", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert where in r.json()["error"]


def test_the_openapi_document_lists_every_status_the_server_answers(client):
    doc = client.get("/openapi.json").json()
    ops = {(path, method): op for path, item in doc["paths"].items() for method, op in item.items()}
    want = {
        ("/v1/models/{name}/predict", "post"): {"200", "401", "404", "413", "422", "429", "500", "503", "504"},
        ("/v1/models/{name}/jobs", "post"): {"200", "202", "401", "404", "409", "413", "422", "429", "503"},
        ("/v1/models/{name}/stream", "post"): {"200", "401", "404", "413", "422", "503"},
        ("/v1/jobs/{job_id}", "get"): {"200", "401", "404"},
        ("/v1/jobs/{job_id}", "delete"): {"200", "401", "404", "409"},
        ("/v1/models/{name}", "get"): {"200", "401", "404"},
        ("/readyz", "get"): {"200", "503"},
    }
    for key, statuses in want.items():
        assert statuses <= set(ops[key]["responses"]), (key, sorted(ops[key]["responses"]))
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # 422 bodies are {"error": ...}
    refs = {op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"] for op in ops.values()
            if "422" in op["responses"]}  # fmt: skip
    assert refs == {"#/components/schemas/ErrorBody"}
    assert doc["components"]["schemas"]["PredictRequest"]["properties"]["instances"]["minItems"] == 1
    assert list(ops[("/metrics", "get")]["responses"]["200"]["content"]) == ["text/plain"]
    assert "text/event-stream" in ops[("/v1/models/{name}/stream", "post")]["responses"]["200"]["content"]


def test_options_on_a_job_lists_get_and_delete(client):
    r = client.options("/v1/jobs/abc")
    assert r.status_code == 405
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}


def test_a_body_that_is_not_utf8_is_422_as_documented(client):
    r = client.post("/v1/models/double/predict", content=b'{"instances": ["\xff"]}',
                    headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 422 and "UTF-8" in r.json()["error"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_their_assets_from_the_server_itself(tmp_path, page):
    with make_client(tmp_path, api_key="s3cret") as c:  # the docs stay open with an API key
        html = c.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
        assert urls, html.text
        assert all(u.startswith("/") and not u.startswith("//") for u in urls), urls  # same origin: no CDN
        kinds = set()
        for u in urls:
            r = c.get(u)
            assert r.status_code == 200, u
            kinds.add(r.headers["content-type"].split(";")[0])
        assert "text/javascript" in kinds or "application/javascript" in kinds
        if page == "/docs":
            assert "text/css" in kinds
