"""The TensorFlow / Keras bridge: ONNX models (a real Keras CNN converted by tf2onnx) as trainable torch modules
through ``ds.models.from_onnx``, and Keras 3 models on the torch backend trained by ``ds.Trainer`` as they are.

The fixture tests/fixtures/keras/digits_keras.onnx and its TensorFlow outputs were made by
tests/fixtures/keras/make_keras_onnx.py (TensorFlow 2.21, Keras 3.15, tf2onnx 1.17; see that script).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import deepseek as ds
from deepseek.export import export_onnx, onnx_session, run_onnx
from tests.conftest import REPO

needs_onnx2torch = pytest.mark.skipif(
    importlib.util.find_spec("onnx2torch") is None,
    reason="from_onnx needs onnx2torch (pip install --no-deps onnx2torch)",
)

FIXTURE = REPO / "tests" / "fixtures" / "keras"
KERAS_PARAMETERS = 16 * 3 * 3 + 16 + 4 * 4 * 16 * 10 + 10  # Conv2D(16, 3) on 1 channel, Dense(10) on 4x4x16


def _digits_channels_last(batch_size: int, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """deepseek's digits (N, 1, 8, 8) as the Keras model takes them, (N, 8, 8, 1)."""
    train = ds.data.build_dataset("digits").train
    x = torch.stack([train[i][0] for i in range(batch_size * batches)]).permute(0, 2, 3, 1).contiguous()
    y = torch.tensor([int(train[i][1]) for i in range(batch_size * batches)])
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def _train_losses(model: torch.nn.Module, batches: list, run_dir: Path, lr: float) -> list[float]:
    trainer = ds.Trainer(
        model, torch.optim.Adam(model.parameters(), lr=lr), loss_fn=torch.nn.functional.cross_entropy,
        max_steps=len(batches), max_epochs=None, device="cpu", metrics=(), run_dir=run_dir, tensorboard=False,
        progress="off", checkpoint_every_minutes=None, log_every_steps=1, save_best=False,
    )  # fmt: skip
    trainer.fit(batches)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["train/loss"] for r in records if "train/loss" in r]


@needs_onnx2torch
@pytest.mark.slow  # trains a Keras CNN in TensorFlow and converts it: about 20 s
@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("tf2onnx") is None,
    reason="the conversion needs the tf extra (pip install -c constraints.txt -e '.[tf]')",
)
def test_a_keras_model_converted_by_tf2onnx_here_matches_tensorflow(tmp_path: Path):
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run([sys.executable, str(FIXTURE / "make_keras_onnx.py"), "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation accuracy" in done.stdout, done.stdout
    expected = np.load(tmp_path / "digits_keras_expected.npz")
    model = ds.models.from_onnx(tmp_path / "digits_keras.onnx").eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(expected["inputs"]))
    np.testing.assert_allclose(logits.numpy(), expected["logits"], rtol=0, atol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == KERAS_PARAMETERS


@needs_onnx2torch
def test_keras_model_converted_by_tf2onnx_matches_tensorflow():
    expected = np.load(FIXTURE / "digits_keras_expected.npz")
    model = ds.models.from_onnx(FIXTURE / "digits_keras.onnx")
    assert isinstance(model, torch.nn.Module) and model.training
    # every Keras weight is a trainable parameter, the Dense kernel and bias (MatMul + Add in ONNX) included
    params = list(model.parameters())
    assert all(p.requires_grad for p in params) and sum(p.numel() for p in params) == KERAS_PARAMETERS
    assert not any(b.is_floating_point() for b in model.buffers())  # only shapes and indices stay buffers
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(expected["inputs"]))
    np.testing.assert_allclose(logits.numpy(), expected["logits"], rtol=0, atol=1e-5)  # float32 rounding only
    assert logits.argmax(1).tolist() == expected["labels"].tolist()  # the 8 fixed digits are classified right


@needs_onnx2torch
def test_converted_keras_model_fine_tunes_in_trainer_and_exports_again(tmp_path):
    model = ds.models.from_onnx(FIXTURE / "digits_keras.onnx")
    torch.manual_seed(0)
    batch = _digits_channels_last(128, 1)[0]  # one batch again and again: the loss on it must fall at every step
    losses = _train_losses(model, [batch] * 6, tmp_path / "run", lr=1e-2)
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0] and losses == sorted(losses, reverse=True), losses

    # torch.export cannot trace onnx2torch's modules (its Reshape branches on the shape tensor's values), so
    # deepseek's exporter falls back to torch's TorchScript exporter, which onnx2torch targets, and says so
    model.eval()
    x = _digits_channels_last(32, 1)[0][0]
    path = tmp_path / "finetuned.onnx"
    with pytest.warns(UserWarning, match="TorchScript exporter"):
        export_onnx(model, (x[:4],), path, input_names=["image"], output_names=["logits"],
                    dynamic={"image": {0: "batch"}})  # fmt: skip
    got = run_onnx(onnx_session(path), [x])[0]  # another batch size than the traced one
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # and the re-exported file loads again, with the fine-tuned weights (opset 17: onnx2torch 1.5 has no converter
    # for the opset-19 versions of Reshape, Shape, Cast and Identity, which torch's default opset would give)
    tuned = ds.models.from_onnx(path)
    with torch.no_grad():
        np.testing.assert_allclose(tuned.eval()(x).numpy(), want, rtol=0, atol=1e-5)


class _Payload:
    """Unpickling it would create ``marker``: the not-an-ONNX-model test checks that nothing was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@needs_onnx2torch
def test_bad_files_are_one_line_value_errors_and_nothing_is_executed(tmp_path):
    with pytest.raises(ValueError, match=r"^from_onnx: path '.*missing.onnx' is not a file"):
        ds.models.from_onnx(tmp_path / "missing.onnx")

    marker = tmp_path / "executed"
    pickled = tmp_path / "model.onnx"
    pickled.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"^from_onnx: '.*model.onnx' is not (a valid|an) ONNX model") as info:
        ds.models.from_onnx(pickled)
    assert "\n" not in str(info.value) and not marker.exists()

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Unique", ["r"], ["y"])], "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )  # fmt: skip
    unsupported = tmp_path / "unique.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(unsupported))
    with pytest.raises(ValueError, match=r"^from_onnx: '.*unique.onnx' uses ops onnx2torch cannot convert: Unique \(opset 17\) \(for a standard op"):  # fmt: skip
        ds.models.from_onnx(unsupported)


KERAS_TORCH_BACKEND = textwrap.dedent(
    """
    import json, sys, torch
    import keras
    import deepseek as ds

    assert keras.config.backend() == "torch"
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    assert isinstance(model, torch.nn.Module) and all(p.requires_grad for p in model.parameters())
    digits = ds.data.build_dataset("digits", flatten=True).train
    x = torch.stack([digits[i][0] for i in range(1024)])
    y = torch.tensor([int(digits[i][1]) for i in range(1024)])
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1024, 64)]
    trainer = ds.Trainer(
        model, torch.optim.Adam(model.parameters(), lr=3e-2), loss_fn=torch.nn.functional.cross_entropy,
        max_steps=16, max_epochs=None, device="cpu", metrics=(), run_dir=sys.argv[1], tensorboard=False,
        progress="off", checkpoint_every_minutes=None, log_every_steps=1, save_best=False,
    )
    trainer.fit(batches)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(json.dumps({"accuracy": accuracy, "parameters": sum(p.numel() for p in model.parameters())}))
    """
)


@pytest.mark.slow  # importing Keras takes several seconds on its own
def test_keras3_model_on_the_torch_backend_trains_in_trainer(tmp_path):
    if importlib.util.find_spec("keras") is None:  # not imported here: this process has no Keras backend set
        pytest.skip("needs keras (pip install keras)")
    run_dir = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-c", KERAS_TORCH_BACKEND, str(run_dir)], capture_output=True, text=True, timeout=300,
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": "torch"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["parameters"] == 64 * 32 + 32 + 32 * 10 + 10  # the Keras weights are the module's parameters
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [rec["train/loss"] for rec in records if "train/loss" in rec]
    assert len(losses) == 16 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert result["accuracy"] > 0.5  # chance is 0.1
