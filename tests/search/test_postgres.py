"""A study on a real PostgreSQL server (tests/postgres.py starts one): two worker processes share it, and a trial
whose worker was killed -9 is failed by Optuna's heartbeat and retried -- what workers on several machines rely
on, since there a dead worker's pid cannot be checked."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from deepseek.search.storage import RETRY_ATTR, open_storage, recover_stale_trials, run_workers
from tests import postgres, process_tree
from tests.search.test_storage import STUDY, check_shared_study, optimize_worker, start_blocking_worker

postgres_server, postgres_url = postgres.postgres_server, postgres.postgres_url  # the fixtures, for this module


@pytest.mark.distributed
def test_two_workers_share_a_postgresql_study(tmp_path: Path, postgres_url: str):
    optuna.create_study(study_name=STUDY, storage=open_storage(postgres_url, tmp_path))
    run_workers(optimize_worker, (postgres_url, str(tmp_path), 20, 2), workers=2, timeout_s=240)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(postgres_url, tmp_path))
    check_shared_study(study, 20, 2)
    assert not (tmp_path / "journal.log").exists()  # everything went to the database


@pytest.mark.distributed
def test_heartbeat_fails_and_retries_a_killed_workers_trial(tmp_path: Path, postgres_url: str):
    # tag=False: the trial carries no pid, as if its worker ran on another machine; only the heartbeat can tell
    proc = start_blocking_worker(tmp_path, postgres_url, n_trials=4, block_at=1, tag=False)
    storage = open_storage(postgres_url, tmp_path, heartbeat_s=1, grace_s=2, retry_failed=1)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    try:
        assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
        assert recover_stale_trials(study, retry_failed=1) == []  # its heartbeat is fresh
    finally:
        assert process_tree.kill_tree(proc, signal.SIGKILL) == []

    recovered: list[int] = []
    # the grace period (2 s) runs from the last heartbeat: poll until it has passed, at most a minute
    assert process_tree.poll(lambda: bool(recovered.extend(recover_stale_trials(study, 1)) or recovered), 60, 0.5)
    assert recovered == [1]
    killed = study.trials[1]
    assert killed.state == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.user_attrs[RETRY_ATTR], t.params) for t in waiting] == [(1, killed.params)]

    study.optimize(lambda t: t.suggest_float("x", -1.0, 1.0) ** 2, callbacks=[optuna.study.MaxTrialsCallback(4)])
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 1
    assert [t.params for t in study.trials if t.user_attrs.get(RETRY_ATTR) == 1] == [killed.params]
