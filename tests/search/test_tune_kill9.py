"""``deepseek tune`` killed with kill -9 in the middle of a trial, then started again: the finished trials are
kept, the killed one is marked failed and (``--retry-failed 1``) run again with its values, and the study
reaches its budget. The trial is held by a user callback that waits on an event nobody sets, so the kill
always lands mid-trial."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from deepseek.search.storage import RETRY_ATTR, open_storage
from tests import process_tree
from tests.conftest import REPO, write_yaml

BLOCKER = """
import threading
from pathlib import Path

class BlockTrial:
    '''Holds trial `trial` (its run directory's name) at its first step, after writing `marker`.'''
    def __init__(self, trial: str, marker: str):
        self.trial, self.marker = trial, marker
    def on_step_end(self, trainer):
        if trainer.run_dir is not None and trainer.run_dir.name == self.trial:
            Path(self.marker).write_text(str(trainer.run_dir))
            threading.Event().wait()  # never set: the test kills the process here
"""


def tune_command(tmp_path: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "deepseek", "tune", str(tmp_path / "cfg.yaml"), "--space",
            str(tmp_path / "space.yaml"), "--trials", str(trials), "--study", "k9", "--study-dir",
            str(tmp_path / "study"), "--sampler", "random", "--pruner", "none", "--seed", "0", "--retry-failed", "1"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_tune_killed_mid_trial_continues_when_started_again(tmp_path: Path, user_module):
    env = user_module("blocker", BLOCKER)
    base = yaml.safe_load((REPO / "configs" / "mlp_digits.yaml").read_text())
    base["model"]["hidden"] = [32]
    base["train"]["max_epochs"] = 2
    base["logging"] = {"every_steps": 20, "tensorboard": False, "progress": "off"}
    marker = tmp_path / "blocked"
    base["callbacks"] = [{"name": "blocker:BlockTrial", "trial": "0002", "marker": str(marker)}]
    write_yaml(tmp_path / "cfg.yaml", base)
    (tmp_path / "space.yaml").write_text("optim.lr: {type: float, low: 1.0e-3, high: 3.0e-2, log: true}\n")

    proc = process_tree.popen(tune_command(tmp_path, 4), env={**os.environ, **env}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        assert process_tree.poll(lambda: marker.exists() or proc.poll() is not None, timeout=240)
        assert proc.poll() is None, proc.communicate()[0]
    finally:
        assert process_tree.kill_tree(proc, signal.SIGKILL) == []  # kill -9 of the whole tune
    study_dir = tmp_path / "study"
    killed = optuna.load_study(study_name="k9", storage=open_storage(None, study_dir))
    assert [t.state for t in killed.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    finished = {t.number: (t.value, t.params) for t in killed.trials[:2]}
    killed_params = killed.trials[2].params

    again = process_tree.run(tune_command(tmp_path, 4), timeout=240, env={**os.environ, **env}, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "study k9: trials 2 were running when their worker died: marked failed (queued again" in again.stdout

    study = optuna.load_study(study_name="k9", storage=open_storage(None, study_dir))
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert {t.number: (t.value, t.params) for t in trials[:2]} == finished  # nothing finished was lost
    assert (trials[3].user_attrs[RETRY_ATTR], trials[3].params) == (2, killed_params)  # the retry, same values
    with open(study_dir / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE"), ("2", "FAIL"),
                                                          ("3", "COMPLETE"), ("4", "COMPLETE")]  # fmt: skip
    assert (study_dir / "best.yaml").is_file()
