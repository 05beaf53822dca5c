"""deepseek compress: every requested level in the report (JSON + PNG), the pick within the budget."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from deepseek.cli.main import main  # noqa: E402
from deepseek.compress.report import pick  # noqa: E402
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


@pytest.mark.slow
def test_cli_report_has_every_level_and_saves_the_choice(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run), "train.max_epochs=1"]) == 0
    out = tmp_path / "cmp"
    argv = ["compress", str(REPO / "configs" / "quickstart.yaml"), "--checkpoint", str(run), "--levels", "fp32,fp16,int8,int4",
            "--max-accuracy-drop", "100", "--batches", "2", "--repeats", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert {r["level"] for r in report["rows"]} == {"fp32", "fp16", "int8", "int4"}
    good = [r for r in report["rows"] if "error" not in r]
    assert len(good) >= 6 and all(r["size_mb"] > 0 and r["latency_ms"] > 0 for r in good)
    assert (out / "report.png").stat().st_size > 10_000
    chosen = report["chosen"]
    assert round(chosen["size_mb"], 3) == round(min(r["size_mb"] for r in good), 3)
    assert any((out / name).exists() for name in ("model.pt", "model.pt2", "model.onnx"))
    assert "chosen:" in capsys.readouterr().out
    assert (
        main(["compress", str(REPO / "configs" / "quickstart.yaml"), "--checkpoint", str(run), "--levels", "fp8"]) == 2
    )
