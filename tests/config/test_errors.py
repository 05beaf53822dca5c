"""Each kind of config error: one message naming the file, the key path, the bad value and what is
allowed; exit code 2; no traceback."""

from __future__ import annotations

import pytest

from deepseek.cli.main import main
from tests.conftest import REPO, run_cli, write_yaml

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def errors(capsys, *argv: str) -> str:
    assert main(["config", "validate", *argv]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return out.err


def test_unknown_key_suggests_the_close_one(capsys):
    err = errors(capsys, QUICKSTART, "optim.lrr=0.1")
    assert QUICKSTART in err and "optim.lrr" in err and "did you mean 'lr'" in err and "allowed keys:" in err


def test_every_problem_is_reported_at_once(capsys):
    err = errors(capsys, QUICKSTART, "model.num_clases=3", "trian.max_epochs=2", "data.batch_size=0")
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: config ") for line in lines)
    assert "did you mean 'train'" in err and "did you mean 'num_classes'" in err and "data.batch_size" in err


def test_unknown_builder_argument_lists_the_signature(capsys):
    err = errors(capsys, QUICKSTART, "model.num_clases=3")
    assert "model.num_clases" in err and "did you mean 'num_classes'" in err and "width" in err


def test_wrong_type(capsys):
    err = errors(capsys, QUICKSTART, "train.max_epochs=abc")
    assert "train.max_epochs" in err and "valid integer" in err and "'abc'" in err


@pytest.mark.parametrize(
    "override, path, allowed",
    [
        ("optim.lr=-1", "optim.lr", "greater than 0"),
        ("data.batch_size=0", "data.batch_size", "greater than 0"),
        ("model.dropout=1.5", "model.dropout", "less than 1"),
        ("train.precision=fp8", "train.precision", "'auto', 'fp32', 'bf16-mixed', 'fp16-mixed' or 'progressive'"),
    ],
)
def test_out_of_range_value(capsys, override, path, allowed):
    err = errors(capsys, QUICKSTART, override)
    assert f"{path}:" in err and allowed in err and override.split("=")[1] in err


def test_unknown_component_name(capsys):
    err = errors(capsys, QUICKSTART, "model.name=cnnn")
    assert "model.name" in err and "did you mean 'cnn'" in err and "simple_cnn" in err


def test_missing_file(capsys, tmp_path):
    err = errors(capsys, str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in err and "file not found" in err


def test_unparsable_file(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: cnn\ndata: [\n")
    err = errors(capsys, str(bad))
    assert "bad.yaml" in err and "not valid YAML at line 2" in err


def test_missing_required_section(capsys, tmp_path):
    err = errors(capsys, str(write_yaml(tmp_path / "c.yaml", {"model": {"name": "cnn"}})))
    assert "data: required key is missing" in err


def test_bad_override_syntax(capsys):
    err = errors(capsys, QUICKSTART, "optim.=3")
    assert "key.path=value" in err


def test_overrides_are_typed():
    from deepseek.config import load_config

    cfg = load_config(QUICKSTART, ["optim.lr=1e-3", "data.batch_size=16"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float) and cfg.data.batch_size == 16


@pytest.mark.slow  # a real process: seconds; the fast lane keeps to its 2-minute budget
def test_real_process_exits_2_without_traceback():
    r = run_cli("train", QUICKSTART, "optim.lr=-1")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "optim.lr" in r.stderr and "-1" in r.stderr


def test_overrides_may_follow_options(capsys):
    assert main(["config", "validate", QUICKSTART, "--print", "optim.lr=0.5"]) == 0
    assert "lr: 0.5" in capsys.readouterr().out


def test_a_schedule_that_no_longer_fits_the_run_is_a_config_error(tmp_path, capsys):
    argv = ["train", QUICKSTART, "--run-dir", str(tmp_path / "run"), "train.max_steps=2", "train.max_epochs=null",
            "scheduler.warmup_steps=20"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "scheduler (warmup_cosine)" in err and "warmup_steps" in err
