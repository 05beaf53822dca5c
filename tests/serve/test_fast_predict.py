"""The predict fast path (deepseek.serve.app.fast_predict) answers byte for byte what FastAPI's route answers, and
hands every body it does not fully recognise to FastAPI. (Proposed for tests/serve/test_fast_predict.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from deepseek.serve import ServeSettings, create_app
from deepseek.serve.model import ServedModel
from deepseek.serve.spec import InputSpec, TensorSpec


class Scores(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3) -> (B, 3) logits
        return x * 2


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    m = ServedModel("cls", "1", Scores(), InputSpec({"x": TensorSpec([3])}), "test", labels=["a", "b", "c"])
    with TestClient(create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite", job_workers=1))) as c:
        while not c.get("/readyz").json()["ready"]:
            pass  # warm-up of a 3-number model: a few ms
        yield c


BODIES = [
    b'{"instances": [[1, 2, 3]]}', b'{"instances": [[1, 2, 3], [3, 2, 1]], "timeout_s": 5, "parameters": {}}',
    b'{"instances": []}', b'{"instances": [[1, 2]]}', b'{"instances": [[1, NaN, 3]]}', b'{"instances": [[1, 2, 3]], "parameters": {"k": 1}}',
    b'{"instances": [[1, 2, 3]], "timeout_s": NaN}', b'{"instances": [[1, 2, 3]], "timeout_s": true}',
    b'{"instances": [[1, 2, 3]], "timeout_s": "5"}', b'{"instances": [[1, 2, 3]], "timeout_s": 1e400}',
    b'{"instances": [[1, 2, 3]], "extra": 1}', b'{"instances": "x"}', b'[1]', b'{"instances": [', b'\xff\xfe',
]  # fmt: skip
PATHS = ["/v1/models/cls/predict", "/v1/models/cls/versions/1/predict", "/v1/models/cls/versions/2/predict",
         "/v1/models/nope/predict", "/v1/models/cls/predict?version=2"]  # fmt: skip


@pytest.mark.parametrize("path", PATHS)
def test_the_fast_path_answers_what_fastapi_answers(client, path):
    guard = client.app
    for body in BODIES:
        answers = []
        for fast in (guard.fast, None):
            guard.fast, saved = fast, guard.fast
            r = client.post(path, content=body, headers={"content-type": "application/json"})
            guard.fast = saved
            answers.append((r.status_code, r.content, r.headers.get("content-type"), r.headers.get("retry-after")))
        assert answers[0] == answers[1], (path, body)


def test_predictions_through_the_fast_path_are_counted_under_the_route(client):
    client.post("/v1/models/cls/predict", json={"instances": [[1, 2, 3]]})
    metrics = client.get("/metrics").text
    assert 'ds_serve_requests_total{code="200",model="cls",route="/v1/models/{name}/predict"} 1.0' in metrics
