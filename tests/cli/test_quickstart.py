"""The quick start end to end: `deepseek train` on bundled digits, the run-directory contract,
`deepseek eval`, `--help` on each command, and the Python example."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, run_cli


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("qs") / "run"
    r = run_cli("train", "configs/quickstart.yaml", "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr
    return run_dir, r


@pytest.mark.slow
def test_reaches_97_percent_and_writes_the_run_directory(quickstart_run):
    run_dir, r = quickstart_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val"]["accuracy"] >= 0.97, summary
    assert summary["steps"] == 15 * 23 and summary["wall_s"] > 0 and "loss" in summary["val"]
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["model"]["name"] == "simple_cnn" and resolved["train"]["precision"] == "auto"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in rec for rec in records) and any("val/accuracy" in rec for rec in records)
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "final" / "model.safetensors").is_file()
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert 1 <= len(ckpts) <= 4 and (run_dir / "checkpoints" / "best.json").is_file()  # last 3 + best
    assert "run summary" in r.stdout and "step 20/345" in r.stdout  # plain lines: stdout is not a TTY


@pytest.mark.slow
def test_eval_reports_the_same_accuracy(quickstart_run):
    run_dir, _ = quickstart_run
    summary = json.loads((run_dir / "summary.json").read_text())
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    r = run_cli(
        "eval", "configs/quickstart.yaml", "--checkpoint", str(run_dir / "checkpoints" / best["name"]), "--json"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["val/accuracy"] == pytest.approx(best["value"])
    r = run_cli(
        "eval", "configs/quickstart.yaml", "--checkpoint", str(run_dir / "final" / "model.safetensors"), "--json"
    )
    assert json.loads(r.stdout)["val/accuracy"] == pytest.approx(summary["val"]["accuracy"])


@pytest.mark.slow  # a fresh process or server: kept out of the fast lane
def test_eval_of_a_missing_checkpoint_is_a_clear_error():
    r = run_cli("eval", "configs/quickstart.yaml", "--checkpoint", "/no/such/ckpt")
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["config", "validate"], ["list"], ["launch"]])
def test_help_on_each_command(command):
    from deepseek.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0


@pytest.mark.slow
def test_python_example_runs(tmp_path):
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / "quickstart.py"), "--run-dir", str(tmp_path / "py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "py" / "summary.json").read_text())
    assert summary["val"]["accuracy"] >= 0.97
