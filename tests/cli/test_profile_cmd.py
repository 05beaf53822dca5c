"""``deepseek profile CONFIG``: a real run's model, data and step profiled for a window, then the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepseek.cli.main import main
from deepseek.profiler import schema_problems

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "mlp_digits.yaml")


def test_profile_runs_the_configs_training_step_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "prof"
    assert main(["profile", CONFIG, "data.batch_size=32", "--steps", "2", "--start-step", "1", "--output-dir",
                 str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "step split" in printed and "bottlenecks" in printed and f"wrote {out / 'summary.json'}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert schema_problems(summary) == [] and summary["steps"] == 2 and summary["batch_size"] == 32
    assert summary["model"] == "mlp" and summary["mode"] == "train"
    assert summary["split_s"]["data_wait"] > 0  # the config's real data loader
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.json", *summary["files"].values()])


@pytest.mark.parametrize(
    "args, named",
    [
        (["--steps", "0"], "--steps 0: must be 1 or more"),
        (["--start-step", "-1"], "--start-step -1: must be 0"),
        (["--metrics", "bogus"], "--metrics: bogus is not a metric"),
    ],
)
def test_bad_options_are_one_error_line_and_exit_code_2(args, named, tmp_path, capsys):
    assert main(["profile", CONFIG, *args, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1
