"""A run's fp32 versions (the torch model, model.onnx, model.openvino.xml) answer alike, so a request that names no
version gets the fastest of them, timed at warm-up; INT8 versions and ``--default-version first`` keep the first."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient

from deepseek.serve import InputSpec, ServedModel, ServeSettings, TensorSpec, create_app


class Doubler(torch.nn.Module):
    """(N, 2) -> (N, 2): twice the input; ``delay_s`` a forward makes it the slow one, whatever the machine's load."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay_s)
        return x * 2


def _version(name: str, version: str, delay_s: float, fp32_of: str | None) -> ServedModel:
    return ServedModel(name, version, Doubler(delay_s), InputSpec({"x": TensorSpec([2])}), "test", fp32_of=fp32_of)


@contextlib.contextmanager
def _client(models: list[ServedModel], tmp_path, **settings) -> Iterator[TestClient]:
    app = create_app(models, ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=1, **settings))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app did not become ready"
            time.sleep(0.02)
        yield client


def _default(client: TestClient, name: str) -> str:
    r = client.post(f"/v1/models/{name}/predict", json={"instances": [{"x": [1.0, 2.0]}]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"] == [[2.0, 4.0]]
    return r.json()["version"]


@pytest.fixture
def models() -> list[ServedModel]:
    return [
        _version("run", "1", 0.05, None),  # the torch model: slow here
        _version("run", "onnx", 0.0, "1"),  # its fp32 export: fast
        _version("run", "int8", 0.0, None),  # fast too, but not the same answers: never the default
        _version("other", "1", 0.05, None),
        _version("other", "int8", 0.0, None),  # no fp32 export: nothing to choose, the first stays
    ]


def test_the_fastest_fp32_version_becomes_the_default(models, tmp_path):
    with _client(models, tmp_path) as client:
        assert _default(client, "run") == "onnx"
        assert _default(client, "other") == "1"
        assert [v["version"] for v in client.get("/v1/models/run").json()["versions"]][0] == "onnx"
        assert client.post("/v1/models/run/versions/1/predict", json={"instances": [{"x": [1.0, 2.0]}]}).json()[
            "version"] == "1"  # fmt: skip


def test_default_version_first_keeps_the_torch_model(models, tmp_path):
    with _client(models, tmp_path, default_version="first") as client:
        assert _default(client, "run") == "1"
