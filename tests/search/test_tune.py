"""``tune()`` and ``deepseek tune`` end to end on a tiny real config: run directories, the study's files,
continuing a study, pruning, and one-line errors for bad options."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from deepseek.config import load_config
from deepseek.errors import ConfigError
from deepseek.search import open_storage, tune
from tests.conftest import REPO

CONFIG = REPO / "configs" / "mlp_digits.yaml"
# two epochs of a one-layer MLP on the 8x8 digits: a fraction of a second per trial on one thread
TINY = ["train.max_epochs=2", "model.hidden=[32]", "logging.tensorboard=false", "logging.progress=off"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_study_writes_runs_table_best_config_and_offline_plots_and_continues(tmp_path: Path) -> None:
    space = _write(tmp_path / "space.yaml", "optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n"
                   "model.hidden: {type: categorical, choices: [[16], [32]]}\n")  # fmt: skip
    folder = tmp_path / "study"
    study = tune(CONFIG, space, 3, study_dir=folder, sampler="random", pruner="none", seed=0, overrides=TINY)
    assert study is not None
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3

    with open(folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == ["number", "state", "value", "optim.lr", "model.hidden", "duration_s", "run_dir"]
    for row, trial in zip(rows, trials):
        run_dir = Path(row["run_dir"])
        assert run_dir == folder / "trials" / f"{trial.number:04d}"
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())  # the trial's own resolved config
        assert saved["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
        assert saved["model"]["hidden"] == yaml.safe_load(trial.params["model.hidden"])
        validations = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        accuracies = [r["val/accuracy"] for r in validations if "val/accuracy" in r]
        assert len(accuracies) == 2 and float(row["value"]) == pytest.approx(max(accuracies))  # the best one

    best = study.best_trial
    cfg = load_config(folder / "best.yaml")  # ready to run: validates as a config
    assert cfg.optim.lr == pytest.approx(best.params["optim.lr"])
    assert cfg.model.hidden == yaml.safe_load(best.params["model.hidden"]) and cfg.train.max_epochs == 2
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        html = (folder / "plots" / f"{name}.html").read_text()
        assert "Plotly.newPlot" in html and re.search(r"<script[^>]*\bsrc=", html) is None  # plotly.js inline
    info = json.loads((folder / "study.json").read_text())
    assert info["metric"] == "val/accuracy" and info["mode"] == "max" and info["trial_states"] == {"COMPLETE": 3}
    assert info["best"]["number"] == best.number

    # started again with a bigger budget: the finished trials stay, one more runs
    again = tune(CONFIG, space, 4, study_dir=folder, sampler="random", pruner="none", seed=1, overrides=TINY)
    assert again is not None
    assert [t.number for t in again.trials] == [0, 1, 2, 3]
    assert [t.value for t in again.trials[:3]] == [t.value for t in trials]
    assert (folder / "trials" / "0003" / "config.yaml").is_file()

    # the same study name with another space is refused before any trial
    other = _write(tmp_path / "other.yaml", "optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n")
    with pytest.raises(ConfigError, match=r"was started with another space; .* new --study name"):
        tune(CONFIG, other, 5, study_dir=folder, overrides=TINY)


def test_a_clearly_bad_trial_is_pruned_at_its_first_validation(tmp_path: Path) -> None:
    space = _write(tmp_path / "space.yaml", "optim.lr: {type: float, low: 1.0e-7, high: 3.0e-2, log: true}\n")
    folder = tmp_path / "study"
    # two good learning rates first, then one that cannot learn anything in an epoch
    study = optuna.create_study(study_name="prune", storage=open_storage(None, folder), direction="maximize")
    for lr in (0.01, 0.02, 1e-7):
        study.enqueue_trial({"optim.lr": lr})
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    overrides = [*TINY, "train.max_epochs=3"]
    result = tune(CONFIG, space, 3, study_name="prune", study_dir=folder, pruner=pruner, overrides=overrides)
    assert result is not None
    states = [t.state for t in sorted(result.trials, key=lambda t: t.number)]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.PRUNED]
    pruned = result.trials[2]
    assert list(pruned.intermediate_values) == [1]  # stopped at its first validation, of three
    summary, full = (json.loads((folder / "trials" / f"000{n}" / "summary.json").read_text()) for n in (2, 0))
    assert 3 * summary["steps"] == full["steps"] and "pruned" in summary["stop_reason"]  # one epoch of three
    assert [list(t.intermediate_values) for t in result.trials[:2]] == [[1, 2, 3]] * 2


def _cli(*argv: str) -> int:
    """``deepseek tune ARGV`` in this process."""
    from deepseek.cli.main import main

    return main(["tune", *argv])


def test_the_command_runs_a_study_and_refuses_bad_options_with_one_line(tmp_path: Path, capsys) -> None:
    space = _write(tmp_path / "space.yaml", "optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")
    base = [str(CONFIG), "--space", str(space), "--study-dir", str(tmp_path / "s")]
    for options, expected in [
        (["--trials", "0"], "error: --trials 0: must be an integer >= 1"),
        (["--trials", "x"], "error: --trials 'x': not an integer; expected an integer >= 1"),
        (["--trials", "2", "--sampler", "bayes"], "error: --sampler 'bayes': not allowed; allowed: tpe, gp, cmaes"),
        (["--trials", "2", "--pruner", "asha"], "error: --pruner 'asha': not allowed; allowed: median, hyperband"),
        (["--trials", "2", "--mode", "up"], "error: --mode 'up': not allowed; allowed: max, min"),
        (["--trials", "2", "--storage", "redis://x"], "error: --storage: storage 'redis://x': unsupported database"),
        (["--trials", "2", "--space", str(tmp_path / "nope.yaml")], "error: --space '"),
    ]:
        assert _cli(*base, *options) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected) and err.count("\n") == 1, err
    assert _cli(*base, "--trials", "2", "--metric", "val/acc", *TINY) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: --metric val/acc: not a validation metric of this config; allowed: val/accuracy, val/loss"
    )
    assert _cli(*base, "--trials", "2", "--sampler", "tpe", "--seed", "3", *TINY) == 0  # the typo fixed: same study
    out = capsys.readouterr().out
    assert "trial 1: COMPLETE" in out and "best: trial " in out and "val/accuracy" in out
    assert load_config(tmp_path / "s" / "best.yaml").train.max_epochs == 2


@pytest.mark.parametrize(
    "name, conditional, expected",
    [
        ("tpe", False, "TPESampler"),
        ("gp", False, "GPSampler"),
        ("cmaes", False, "CmaEsSampler"),
        ("random", False, "RandomSampler"),
        ("auto", False, "GPSampler"),  # numeric, unconditional, one worker
        ("auto", True, "TPESampler"),
    ],
)
def test_each_sampler_searches_a_space_from_yaml(name: str, conditional: bool, expected: str) -> None:
    from deepseek.search import load_space, make_sampler, suggest

    if name == "cmaes":
        pytest.importorskip("cmaes")
    text = {"x": {"type": "float", "low": -2.0, "high": 2.0}, "n": {"type": "int", "low": 1, "high": 4}}
    if conditional:
        text["k"] = {"type": "categorical", "choices": ["a", "b"]}
        text["n"]["when"] = {"k": "a"}
    space = load_space(text)
    sampler = make_sampler(name, space, seed=0)
    assert type(sampler).__name__ == expected
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: (lambda v: (v["x"] - 0.5) ** 2 + v.get("n", 1))(suggest(t, space)), n_trials=12)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 12
    for t in study.trials:
        assert -2.0 <= t.params["x"] <= 2.0 and ("n" in t.params) == (t.params.get("k", "a") == "a")
        assert t.params.get("n", 1) in (1, 2, 3, 4)
    assert len({t.params["x"] for t in study.trials}) == 12  # it searches: no point drawn twice


@pytest.mark.slow
@pytest.mark.distributed
def test_two_local_workers_share_one_study_through_the_command(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    space = _write(tmp_path / "space.yaml", "optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")
    folder = tmp_path / "s"
    r = run_cli("tune", str(CONFIG), "--space", str(space), "--trials", "3", "--workers", "2", "--study-dir",
                str(folder), "--sampler", "random", "--pruner", "none", "--seed", "0", *TINY, timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stderr
    storage = open_storage(None, folder)
    trials = optuna.load_study(study_name=storage.get_all_studies()[0].study_name, storage=storage).trials
    # MaxTrialsCallback is checked after each trial: two workers may run one trial more than the budget
    assert 3 <= len(trials) <= 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len(list((folder / "trials").iterdir())) == len(trials)


def test_launch_forwards_tune_to_every_rank() -> None:
    from deepseek.cli.launch_cmd import split_forwarded

    argv = ["launch", "--nproc", "2", "tune", "cfg.yaml", "--space", "s.yaml", "--trials", "4", "optim.lr=0.1"]
    assert split_forwarded(argv) == (["launch", "--nproc", "2"], "tune", argv[4:])
    assert split_forwarded(["launch", "--nproc", "2", "cfg.yaml", "tune"]) is None  # a config first: train
