"""OpenVINO IRs served by a real ``deepseek serve`` process: the IRs ``deepseek export --format openvino`` writes
into a run directory are versions of its model (``openvino``, ``int8-openvino``) with the run's labels, and a bare
``.xml`` + ``.bin`` in a models folder is a model of its own. Predictions match the run's model in torch."""

from __future__ import annotations

import shutil

import httpx
import pytest
import torch

from deepseek.cli.main import main
from tests.conftest import REPO
from tests.serve.conftest import ServerProcess, digits_samples

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = pytest.mark.slow  # trains, exports twice and starts a server: ~40 s


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``models/digits``: a quick-start run with model.openvino.xml and model.int8.openvino.xml beside it;
    ``models/bare.xml`` + ``bare.bin``: a copy of the fp32 IR on its own."""
    root = tmp_path_factory.mktemp("ov_models")
    run = root / "digits"
    train = ["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run), "train.max_steps=30",
             "logging.progress=off", "logging.tensorboard=false"]  # fmt: skip
    assert main(train) == 0
    export = ["export", str(run), "--format", "openvino", "--quantize", "int8", "--calib-batches", "4"]
    assert main(export) == 0
    shutil.copy(run / "model.openvino.xml", root / "bare.xml")
    shutil.copy(run / "model.openvino.bin", root / "bare.bin")
    return root


def test_openvino_versions_and_a_bare_ir_predict_like_torch(models):
    from deepseek.runs import read_run

    _, model = read_run(models / "digits")
    x, _ = digits_samples(24)
    with torch.no_grad():
        logits = model.eval()(torch.tensor(x))
    want = logits.softmax(-1)
    server = ServerProcess(models).start()
    try:
        with server.client() as c:
            listed = {(m["name"], m["version"]): m["backend"] for m in c.models()}
            assert listed == {("digits", "1"): "torch", ("digits", "openvino"): "openvino",
                              ("digits", "int8-openvino"): "openvino", ("bare", "1"): "openvino"}  # fmt: skip
            got = c.predict("digits", x, version="openvino")
            assert [p["index"] for p in got] == want.argmax(-1).tolist()
            assert [p["label"] for p in got] == [str(i) for i in want.argmax(-1).tolist()]  # the run's labels
            torch.testing.assert_close(torch.tensor([p["scores"] for p in got]), want, atol=1e-4, rtol=0)
            int8 = c.predict("digits", x, version="int8-openvino")
            agree = sum(p["index"] == i for p, i in zip(int8, want.argmax(-1).tolist()))
            assert agree >= 21, f"INT8 agrees with torch on {agree}/24 digits"
            bare = c.predict("bare", x)  # no labels: the raw logits
            torch.testing.assert_close(torch.tensor(bare), logits, atol=1e-4, rtol=0)
        # a request that names no version gets the fastest fp32 version (timed at warm-up), never the INT8 one
        r = httpx.post(server.url + "/v1/models/digits/predict", json={"instances": x[:2]}, timeout=60)
        assert r.status_code == 200 and r.json()["version"] in ("1", "openvino")
    finally:
        server.kill()
