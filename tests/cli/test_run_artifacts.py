"""What a run leaves behind, fed back to the CLI: `final/` as `--checkpoint` of compress and export,
which weights `deepseek eval` measured, a self-contained `model.onnx`, and no third-party noise."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO, run_cli

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
pytestmark = pytest.mark.slow  # each runs the CLI in a fresh process (10-30 s)
NOISE = ("Failed to load", "register_constant", "Traceback")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A two-step quick-start run (EMA on): config.yaml, checkpoints/step-00000002, final/."""
    run = tmp_path_factory.mktemp("artifacts") / "run"
    r = run_cli("train", QUICKSTART, "--run-dir", str(run), "train.max_steps=2", "scheduler.warmup_steps=1",
                "logging.progress=off")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return run


def test_compress_takes_the_final_directory(run_dir, tmp_path):
    pytest.importorskip("torchao")
    r = run_cli("compress", QUICKSTART, "--checkpoint", str(run_dir / "final"), "--levels", "fp32,fp16",
                "--backends", "torch,onnxruntime", "--batches", "1", "--repeats", "1", "--out", str(tmp_path / "cmp"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert {row["level"] for row in json.loads((tmp_path / "cmp" / "report.json").read_text())["rows"]} == {
        "fp32",
        "fp16",
    }
    for noise in NOISE:  # torchao's missing-kernel lines and torch's deprecation notice are not the user's business
        assert noise not in r.stdout + r.stderr


def test_export_takes_the_final_directory_and_writes_one_self_contained_file(run_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    out = tmp_path / "export" / "model.onnx"
    r = run_cli("export", str(run_dir / "final"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(out, alone / "model.onnx")  # the one file a user copies to deploy
    session = ort.InferenceSession(str(alone / "model.onnx"), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape  # the sample batch's: [64, 1, 8, 8]
    (logits,) = session.run(None, {"input": np.zeros(shape, dtype=np.float32)})
    assert logits.shape == (shape[0], 10)


def test_eval_says_which_checkpoint_and_which_weights(run_dir):
    ckpt = run_dir / "checkpoints" / "step-00000002"
    r = run_cli("eval", QUICKSTART, "--checkpoint", str(run_dir), "--json")
    assert r.returncode == 0, r.stderr
    assert "val/accuracy" in json.loads(r.stdout)  # stdout stays machine-readable
    assert str(ckpt) in r.stderr and "EMA" in r.stderr
    r = run_cli("eval", QUICKSTART, "--checkpoint", str(run_dir / "final"))
    assert r.returncode == 0, r.stderr
    assert str(run_dir / "final" / "model.safetensors") in r.stdout and "EMA" in r.stdout
