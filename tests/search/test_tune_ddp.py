"""Trials on two DDP ranks: rank 0 samples and alone touches the storage, both ranks train every trial and
stop a pruned one together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.gloo_ranks import run_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CONFIG = REPO / "configs" / "mlp_digits.yaml"
TINY = ["train.max_epochs=3", "model.hidden=[16]", "logging.tensorboard=false", "logging.progress=off"]


def _tune_on_rank(rank: int, space: str, folder: str) -> list:
    import optuna

    from deepseek.search import open_storage, tune

    if rank == 0:  # two good learning rates, then one that learns nothing: pruned at its first validation
        study = optuna.create_study(study_name="ddp", storage=open_storage(None, Path(folder)), direction="maximize")
        for lr in (0.01, 0.02, 1e-7):
            study.enqueue_trial({"optim.lr": lr})
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2)
    study = tune(CONFIG, space, 3, study_name="ddp", study_dir=folder, pruner=pruner, overrides=TINY)
    if rank != 0:
        return [study is None]
    trials = sorted(study.trials, key=lambda t: t.number)
    return [[t.state.name for t in trials], [t.value for t in trials], [t.params["optim.lr"] for t in trials]]


def test_two_rank_trials_are_sampled_once_and_trained_with_ddp(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {type: float, low: 1.0e-7, high: 3.0e-2, log: true}\n")
    folder = tmp_path / "study"
    results = run_ranks(_tune_on_rank, 2, str(space), str(folder), timeout_s=180)
    assert results[1] == [True]  # the follower has no study: it never opened the storage
    states, values, lrs = results[0]
    # both ranks stopped the pruned trial at the same validation (else the next trial's DDP would hang)
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"] and lrs == [0.01, 0.02, 1e-7]
    steps = []
    for number, lr in enumerate(lrs):
        run_dir = folder / "trials" / f"{number:04d}"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["strategy"]["name"] == "ddp"
        steps.append(summary["steps"])
        if number < 2:
            assert summary["best"]["value"] == pytest.approx(values[number])
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == lr  # as rank 0 sampled
    assert steps[0] == steps[1] == 3 * steps[2]  # the pruned trial stopped after its first of three epochs
    assert (folder / "best.yaml").is_file() and (folder / "trials.csv").read_text().count("COMPLETE") == 2
