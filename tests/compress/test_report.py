"""deepseek compress: every requested level in the report (JSON + PNG), the pick within the budget, the
export targets as rows (OpenVINO here; ExecuTorch and LiteRT are tested by their own modules' tests)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from deepseek.cli.main import main  # noqa: E402
from deepseek.compress.report import RUNTIMES, compare, pick, runtime_of, variants  # noqa: E402
from tests.conftest import REPO  # noqa: E402


def test_pick_takes_the_smallest_then_fastest_within_the_budget():
    rows = [
        {"level": "fp32", "backend": "torch eager", "accuracy": 0.95, "size_mb": 4.0, "latency_ms": 10.0},
        {"level": "int8", "backend": "a", "accuracy": 0.945, "size_mb": 1.0, "latency_ms": 8.0},
        {"level": "int8", "backend": "b", "accuracy": 0.946, "size_mb": 1.0, "latency_ms": 5.0},
        {"level": "int4", "backend": "c", "accuracy": 0.90, "size_mb": 0.5, "latency_ms": 4.0},
        {"level": "int4", "backend": "d", "error": "RuntimeError: no kernel"},
    ]
    assert pick(rows, max_accuracy_drop=1.0)["backend"] == "b"
    assert pick(rows, max_accuracy_drop=6.0)["backend"] == "c"
    assert pick(rows, max_accuracy_drop=0.0)["backend"] == "torch eager"


def test_pick_counts_sizes_within_5_percent_as_equal_then_takes_the_fastest():
    rows = [
        {"level": "fp32", "backend": "torch eager", "accuracy": 0.95, "size_mb": 4.0, "latency_ms": 10.0},
        {"level": "int8", "backend": "pt2e static, kl", "accuracy": 0.95, "size_mb": 1.00, "latency_ms": 8.0},
        {"level": "int8", "backend": "openvino nncf", "accuracy": 0.95, "size_mb": 1.04, "latency_ms": 3.0},
        {"level": "int8", "backend": "onnxruntime dynamic", "accuracy": 0.95, "size_mb": 1.06, "latency_ms": 1.0},
    ]
    assert pick(rows, max_accuracy_drop=1.0)["backend"] == "openvino nncf"  # 1.06 MB is 6% over: not equal
    embeddings = [{**r, "accuracy": None, "cosine": c} for r, c in zip(rows, (1.0, 0.995, 0.98, 0.999))]
    assert pick(embeddings, max_accuracy_drop=1.0)["backend"] == "pt2e static, kl"  # cosine >= 0.99 for embeddings


def test_backends_filter_keeps_the_baseline_and_rejects_unknown_runtimes(tmp_path):
    assert [runtime_of(b) for b in ("torch eager", "pt2e static, kl", "torchao weight-only", "openvino nncf",
                                     "executorch xnnpack int8", "litert", "onnxruntime fused")] == [
        "torch", "torch", "torch", "openvino", "executorch", "litert", "onnxruntime"]  # fmt: skip
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    val = [(torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))]
    rows = compare(model, val, ("fp32", "fp16"), repeats=1, log=lambda _: None, backends=["torch"])
    assert [(r["level"], r["backend"]) for r in rows] == [("fp32", "torch eager"), ("fp16", "torch")]
    fp32 = variants(model, "fp32", [], val[0][0], "minmax", tmp_path, backends=["litert"])  # built only when run
    assert list(fp32) == ["torch eager", "litert"]
    assert "onnxruntime fused" not in variants(model, "fp32", [], val[0][0], "minmax", tmp_path)  # dict inputs only
    with pytest.raises(ValueError, match=f"backends must be some of {', '.join(RUNTIMES)}; got \\['tensorrt'\\]"):
        compare(model, val, ("fp32",), backends=["tensorrt"])
    assert main(["compress", "x.yaml", "--checkpoint", "none", "--backends", "torch,tvm"]) == 2


@pytest.mark.slow  # OpenVINO conversion and NNCF calibration: ~10 s
def test_openvino_rows_match_torch_and_a_chosen_openvino_row_saves_its_ir(tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from deepseek.cli.compress_cmd import _save

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    val = [(torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    rows = compare(model, val, ("fp32", "bf16", "int8"), repeats=2, log=lambda _: None, backends=["openvino"])
    by_name = {r["backend"]: r for r in rows}
    assert list(by_name) == ["torch eager", "openvino", "openvino bf16", "openvino nncf"]
    # the fp32 IR compiled for bf16 arithmetic: close to torch, not exact
    assert by_name["openvino bf16"]["cosine"] >= 0.999 and "error" not in by_name["openvino bf16"]
    assert (
        by_name["openvino"]["cosine"] >= 0.9999
        and by_name["openvino"]["accuracy"] == by_name["torch eager"]["accuracy"]
    )
    assert by_name["openvino nncf"]["cosine"] >= 0.99 and by_name["openvino nncf"]["size_mb"] > 0
    build, _, _ = variants(model, "int8", [x for x, _ in val], val[0][0], "minmax", tmp_path / "w")["openvino nncf"]
    saved = _save(build(), tmp_path, val[0][0], runtime_of("openvino nncf"))
    assert saved == tmp_path / "model.xml" and (tmp_path / "model.bin").stat().st_size > 0


@pytest.mark.slow
def test_cli_report_has_every_level_and_saves_the_choice(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run), "train.max_epochs=1"]) == 0
    out = tmp_path / "cmp"
    argv = ["compress", str(REPO / "configs" / "quickstart.yaml"), "--checkpoint", str(run), "--levels", "fp32,fp16,int8,int4",
            "--backends", "torch,onnxruntime", "--max-accuracy-drop", "100", "--batches", "2", "--repeats", "2",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert {r["level"] for r in report["rows"]} == {"fp32", "fp16", "int8", "int4"}
    good = [r for r in report["rows"] if "error" not in r]
    assert len(good) >= 6 and all(r["size_mb"] > 0 and r["latency_ms"] > 0 for r in good)
    assert (out / "report.png").stat().st_size > 10_000
    chosen = report["chosen"]
    assert chosen["size_mb"] <= 1.05 * min(r["size_mb"] for r in good)  # the smallest, within pick()'s 5%
    assert any((out / name).exists() for name in ("model.pt", "model.pt2", "model.onnx"))
    assert "chosen:" in capsys.readouterr().out
    assert (
        main(["compress", str(REPO / "configs" / "quickstart.yaml"), "--checkpoint", str(run), "--levels", "fp8"]) == 2
    )
