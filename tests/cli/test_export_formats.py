"""``deepseek export --format openvino|executorch|coreml`` on a tiny trained run: exported, verified in the target's
runtime, INT8 calibrated on training batches; a missing package is one error line with the extra to install."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from deepseek.cli.export_targets import int8_path
from deepseek.cli.main import main
from tests.conftest import REPO


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step quick-start run: config.yaml + final/model.safetensors (digits, input (N, 1, 8, 8))."""
    run = tmp_path_factory.mktemp("export_formats") / "run"
    args = ["train", str(REPO / "configs" / "quickstart.yaml"), "--run-dir", str(run), "train.max_steps=2",
            "scheduler.warmup_steps=1", "logging.progress=off"]  # fmt: skip
    assert main(args) == 0
    return run


def test_int8_files_sit_beside_the_fp32_ones_under_the_names_serving_reads():
    assert int8_path(Path("r/model.openvino.xml")) == Path("r/model.int8.openvino.xml")
    assert int8_path(Path("r/model.pte")) == Path("r/model.int8.pte")
    assert int8_path(Path("r/m")) == Path("r/m.int8")


def _diffs(out: str) -> list[float]:
    return [float(d) for d in re.findall(r"max \|export - torch\| on the .*: (\S+)", out)]


@pytest.mark.slow  # trains two steps and converts twice with NNCF calibration: ~20 s
def test_openvino_export_is_verified_and_int8_is_calibrated_on_training_batches(run, tmp_path, capsys):
    pytest.importorskip("nncf")
    from deepseek.export.openvino import OpenVINOModule
    from deepseek.runs import read_run

    capsys.readouterr()
    assert main(["export", str(run), "--format", "openvino", "--dynamic-batch", "--quantize", "int8",
                 "--calib-batches", "2"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert len(_diffs(out)) == 2 and max(_diffs(out)) < 1e-4  # the sample batch and a smaller one
    assert "int8: calibrating on 128 samples (2 training batches)" in out  # quickstart's batches hold 64
    agreement = re.search(r"argmax agreement with torch (\S+)%, cosine min (\S+)", out)
    assert agreement and float(agreement[1]) >= 80 and float(agreement[2]) >= 0.99
    files = {p.name for p in run.iterdir()}
    assert {"model.openvino.xml", "model.openvino.bin", "model.int8.openvino.xml", "model.int8.openvino.bin"} <= files
    _, model = read_run(run)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert (OpenVINOModule(run / "model.openvino.xml")(x) - model.eval()(x)).abs().max() < 1e-4
    assert main(["export", str(run), "--format", "openvino", "--out", str(tmp_path / "m.xml"), "--atol", "0"]) == 1
    assert "error: the export differs from torch" in capsys.readouterr().out


def test_a_missing_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    run = tmp_path  # options and packages are checked before the run is read: any existing path will do
    monkeypatch.setitem(sys.modules, "nncf", None)  # find_spec() then reports it missing
    out = tmp_path / "m.xml"
    assert main(["export", str(run), "--format", "openvino", "--quantize", "int8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --format openvino needs nncf: pip install 'deepseek-framework[openvino]'"
    assert not out.exists()  # checked before any work: nothing half-written
    assert main(["export", str(run), "--format", "exported-program", "--quantize", "int8"]) == 2
    assert "--quantize int8: not for --format exported-program" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "openvino", "--optimize"]) == 2
    assert "--optimize" in capsys.readouterr().err


@pytest.mark.slow  # ExecuTorch lowering and Core ML conversion: ~40 s
def test_executorch_is_verified_in_its_runtime_and_coreml_is_described(run, tmp_path, capsys):
    pytest.importorskip("executorch")
    pytest.importorskip("coremltools")
    capsys.readouterr()
    pte = tmp_path / "model.pte"
    assert main(["export", str(run), "--format", "executorch", "--out", str(pte), "--quantize", "int8",
                 "--calib-batches", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert max(_diffs(out)) < 1e-4 and "calibrating on 64 samples (1 training batches)" in out
    assert pte.is_file() and (tmp_path / "model.int8.pte").is_file() and "argmax agreement" in out
    assert main(["export", str(run), "--format", "coreml", "--out", str(tmp_path / "model.mlpackage")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"input input: shape .* FLOAT32", out) and re.search(r"\d+ ops \(.*conv \d", out)
    assert "Core ML prediction needs macOS" in out and not _diffs(out)
