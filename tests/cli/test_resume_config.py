"""``--resume`` compares the new config with the run's saved one: changes that cannot resume are refused
before anything is written; allowed ones are listed and saved as a new version, config.yaml untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli, write_yaml


def config(path: Path, width: int = 4) -> Path:
    return write_yaml(
        path,
        {
            "model": {"name": "simple_cnn", "width": width},
            "data": {"name": "digits", "batch_size": 64},
            "optim": {"name": "adamw", "lr": 3e-3},
            "train": {"max_steps": 2, "seed": 0},
            "checkpoint": {"every_steps": 1},
            "logging": {"progress": "plain", "tensorboard": False},
        },
    )


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.slow
def test_resume_refuses_model_and_data_changes_and_versions_allowed_ones(tmp_path):
    cfg, run_dir = config(tmp_path / "cfg.yaml"), tmp_path / "run"
    r = run_cli("train", str(cfg), "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr
    original = (run_dir / "config.yaml").read_text()

    line = one_error_line(run_cli("train", str(cfg), "model.width=8", "--run-dir", str(run_dir), "--resume", "auto"))
    assert "model.width" in line, line
    line = one_error_line(
        run_cli("train", str(cfg), "data.batch_size=32", "train.seed=1", "train.max_steps=3",
                "--run-dir", str(run_dir), "--resume", "auto")
    )  # fmt: skip
    assert "data.batch_size" in line and "train.seed" in line and "train.max_steps" not in line, line
    assert (run_dir / "config.yaml").read_text() == original
    assert not list(run_dir.glob("config.v*.yaml"))

    r = run_cli("train", str(cfg), "train.max_steps=3", "optim.lr=0.001", "--run-dir", str(run_dir), "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "at step 2" in r.stdout
    assert "train.max_steps: 2 -> 3" in r.stderr and "optim.lr: 0.003 -> 0.001" in r.stderr, r.stderr
    assert (run_dir / "config.yaml").read_text() == original
    v2 = yaml.safe_load((run_dir / "config.v2.yaml").read_text())
    assert v2["train"]["max_steps"] == 3 and v2["optim"]["lr"] == 0.001

    r = run_cli("train", str(cfg), "train.max_steps=4", "optim.lr=0.001", "--run-dir", str(run_dir), "--resume", "auto")
    assert r.returncode == 0, r.stderr
    assert "train.max_steps: 3 -> 4" in r.stderr and "optim.lr" not in r.stderr, r.stderr  # against v2
    assert yaml.safe_load((run_dir / "config.v3.yaml").read_text())["train"]["max_steps"] == 4
    assert (run_dir / "config.yaml").read_text() == original


@pytest.mark.slow
def test_resume_auto_without_run_dir_takes_the_latest_run_only_for_the_same_model(tmp_path):
    run_dir = tmp_path / "runs" / "20250101-000000-simple_cnn"
    r = run_cli("train", str(config(tmp_path / "cfg.yaml")), "--run-dir", str(run_dir), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    original = (run_dir / "config.yaml").read_text()

    other = config(tmp_path / "other.yaml", width=8)
    line = one_error_line(run_cli("train", str(other), "--resume", "auto", cwd=tmp_path))
    assert "--run-dir" in line and str(Path("runs") / run_dir.name) in line, line
    assert (run_dir / "config.yaml").read_text() == original
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run_dir.name]
    # resuming that run's checkpoint into a new run directory compares with the run it came from; the
    # refused command leaves no empty new directory under runs/
    line = one_error_line(run_cli("train", str(other), "--resume", str(run_dir / "checkpoints"), cwd=tmp_path))
    assert "model.width" in line, line
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run_dir.name]

    r = run_cli("train", str(tmp_path / "cfg.yaml"), "train.max_steps=3", "--resume", "auto", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    assert (run_dir / "config.yaml").read_text() == original
