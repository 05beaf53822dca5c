"""``deepseek-serve`` over a run directory written before format versions existed (tests/fixtures/run_v1,
format version 0), and its refusal of a run directory in a newer format than it reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from deepseek import runs
from tests.conftest import REPO, run_cli
from tests.serve.conftest import ServerProcess

FIXTURE = REPO / "tests" / "fixtures" / "run_v1"


@pytest.mark.slow
def test_a_version_0_run_directory_serves_what_it_trained(tmp_path: Path) -> None:
    run = Path(shutil.copytree(FIXTURE, tmp_path / "run_v1"))  # serving may write files beside the run
    _, model = runs.read_run(run)
    x = torch.linspace(0, 16, 64).reshape(1, 64)  # one flattened 8x8 digit's worth of pixel values
    with torch.no_grad():
        want = model(x).softmax(-1)
    server = ServerProcess(run).start()
    try:
        with server.client() as c:
            (got,) = c.predict("default", x.tolist())
    finally:
        server.kill()
    assert got["index"] == int(want.argmax()) and got["label"] == str(int(want.argmax()))
    torch.testing.assert_close(torch.tensor(got["scores"]), want[0], atol=1e-5, rtol=0)


@pytest.mark.slow  # a real server process: seconds; the fast lane keeps to its 2-minute budget
def test_a_newer_run_directory_is_refused_with_one_line(tmp_path: Path) -> None:
    run = Path(shutil.copytree(FIXTURE, tmp_path / "run_v1"))
    (run / runs.FORMAT_FILE).write_text(json.dumps({"format_version": runs.FORMAT_VERSION + 1}))
    r = run_cli("serve", "--model_dir", str(run), "--port", "0", timeout=120)  # refused at start, or it would serve
    want = f"run directory {run} has format version {runs.FORMAT_VERSION + 1}; this deepseek reads up to "
    assert r.returncode == 2 and want in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
