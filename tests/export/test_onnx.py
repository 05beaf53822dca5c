"""ONNX export verified in ONNX Runtime: the quick-start CNN, a dict-input model, MiniLM; ORT INT8; the CLI."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from deepseek.cli.main import main
from deepseek.export import (
    TensorInputs,
    export_onnx,
    export_program,
    onnx_session,
    onnx_size,
    quantize_onnx,
    run_onnx,
    verify_onnx,
)
from tests.conftest import REPO

pytest.importorskip("onnxruntime")


def test_cnn_matches_torch_and_takes_another_batch_size(tmp_path):
    torch.manual_seed(0)
    model = ds.models.build("simple_cnn", in_channels=1, num_classes=10).eval()
    path = export_onnx(model, (torch.randn(4, 1, 8, 8),), tmp_path / "cnn.onnx", dynamic={"input": {0: "batch"}})
    for batch in (4, 9):
        assert verify_onnx(path, model, (torch.randn(batch, 1, 8, 8),)) < 1e-4
    assert [i.name for i in onnx_session(path).get_inputs()] == ["input"]
    with pytest.raises(ValueError, match="unknown inputs"):
        export_onnx(model, (torch.randn(4, 1, 8, 8),), tmp_path / "x.onnx", dynamic={"images": {0: "batch"}})


def test_dict_input_model_through_tensor_inputs_with_dynamic_batch_and_length(tmp_path):
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.out = nn.Embedding(100, 16), nn.Linear(16, 3)

        def forward(self, inputs: dict) -> torch.Tensor:
            mask = inputs["attention_mask"].unsqueeze(-1).float()
            return self.out((self.emb(inputs["input_ids"]) * mask).sum(1) / mask.sum(1).clamp_min(1))

    model = TensorInputs(Tagger(), ["input_ids", "attention_mask"]).eval()
    ids, mask = torch.randint(0, 100, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    dims = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"}}
    path = export_onnx(
        model, (ids, mask), tmp_path / "t.onnx", input_names=["input_ids", "attention_mask"], dynamic=dims
    )
    other = (torch.randint(0, 100, (5, 7)), torch.ones(5, 7, dtype=torch.long))
    assert verify_onnx(path, model, other) < 1e-5 and run_onnx(onnx_session(path), other)[0].shape == (5, 3)


@pytest.mark.slow
def test_minilm_exports_with_input_ids_and_attention_mask(tmp_path):
    pytest.importorskip("transformers")
    model = TensorInputs(ds.models.build("minilm", num_classes=4), ["input_ids", "attention_mask"]).eval()
    ids, mask = torch.randint(1000, 20000, (2, 16)), torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    dims = {n: {0: "batch"} for n in ("input_ids", "attention_mask")}
    path = export_onnx(
        model, (ids, mask), tmp_path / "minilm.onnx", input_names=["input_ids", "attention_mask"], dynamic=dims
    )
    assert verify_onnx(path, model, (ids[:1], mask[:1])) < 1e-4
    q = quantize_onnx(path, tmp_path / "minilm.int8.onnx", model, (ids, mask))
    assert onnx_size(q["path"]) < 0.3 * onnx_size(path)  # INT8 weights (fp32 ones sit in minilm.onnx.data)
    assert q["max_abs_diff"] == min(q["tried"].values()) and set(q["tried"]) == {"QUInt8", "QInt8"}


def test_exported_program_round_trips(tmp_path):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    path = export_program(model, (torch.randn(3, 6),), tmp_path / "m.pt2", dynamic={0: {0: "batch"}})
    x = torch.randn(5, 6)
    assert torch.allclose(torch.export.load(str(path)).module()(x), model(x))


@pytest.mark.slow  # trains and exports through the CLI: seconds; the fast lane keeps to its 2-minute budget
def test_cli_exports_a_trained_run_and_fails_above_tolerance(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run), "train.max_epochs=1"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--dynamic-batch", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "max |export - torch| on the sample batch" in out and "on the batch of" in out
    assert main(["export", str(run), "--out", str(tmp_path / "m2.onnx"), "--atol", "0"]) == 1
    assert main(["export", str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow  # exports twice: seconds; the fast lane keeps to its 2-minute budget
def test_one_self_contained_file_unless_the_weights_exceed_the_limit(tmp_path, monkeypatch):
    import deepseek.export.onnx as onnx_module

    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    x = torch.randn(3, 6)
    path = export_onnx(model, (x,), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "m.onnx").write_bytes(path.read_bytes())  # the file alone runs
    assert verify_onnx(moved / "m.onnx", model, (x,)) < 1e-5
    monkeypatch.setattr(onnx_module, "SINGLE_FILE_LIMIT", 100)  # stand in for a model over 2 GB
    with pytest.warns(UserWarning, match=r"m\.onnx\.data.*copy both"):
        export_onnx(model, (x,), path)
    assert (tmp_path / "m.onnx.data").is_file() and verify_onnx(path, model, (x,)) < 1e-5
    monkeypatch.undo()
    export_onnx(model, (x,), path)  # back to one file: the earlier weights file is not left to confuse
    assert not (tmp_path / "m.onnx.data").exists() and verify_onnx(path, model, (x,)) < 1e-5
