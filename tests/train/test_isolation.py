"""``ds.train.isolated_run``: several runs one after another in one process (search trials), each as if alone.

Each trial changes what a run may change: seed, ``train.deterministic``, environment, ``sys.path`` (a directory
holding its own ``trial_model`` module). Under the scope each trial's final weights are bitwise those of the
same trial run alone in a fresh process, and every process-wide global is back after each run; without the
scope (the control test) the trials leak into each other.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

import deepseek as ds
from tests.train.isolation_trials import digest, run_trial, write_trial_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def trials(tmp_path: Path) -> list[dict[str, Any]]:
    # b's module differs from a's (no bias); b sets TRIAL_WIDTH, which c (same module as a) must not see
    a = write_trial_dir(tmp_path, "a", bias=True)
    b = write_trial_dir(tmp_path, "b", bias=False)
    c = write_trial_dir(tmp_path, "c", bias=True)
    return [
        {"dir": str(a), "seed": 1, "deterministic": True, "env": {}},
        {"dir": str(b), "seed": 2, "deterministic": False, "env": {"TRIAL_WIDTH": "12"}},
        {"dir": str(c), "seed": 3, "deterministic": False, "env": {}},
    ]


def globals_now() -> dict[str, Any]:
    """Every process-wide value a run may set, in comparable form."""
    return {
        "random": random.getstate(),
        "numpy": repr(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state().tolist(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "environ": dict(os.environ),
        "sys.path": list(sys.path),
        "trial_model imported": "trial_model" in sys.modules,
        "process group": dist.is_initialized(),
    }


def alone_in_a_fresh_process(trial: dict[str, Any]) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.train.isolation_trials", json.dumps(trial)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three fresh interpreters (torch + deepseek imports) besides the three runs
def test_runs_in_sequence_match_each_run_alone_and_leave_no_global_behind(trials: list[dict[str, Any]]) -> None:
    expected = [alone_in_a_fresh_process(t) for t in trials]
    for trial, alone in zip(trials, expected, strict=True):
        before = globals_now()
        with ds.train.isolated_run():
            weights = run_trial(trial)
        assert globals_now() == before
        assert digest(weights) == alone


def test_each_run_leaves_every_global_as_it_found_it(trials: list[dict[str, Any]]) -> None:
    random.seed(1234)  # the search driver's own state, which no trial may reseed
    for trial in trials:
        before = globals_now()
        with ds.train.isolated_run():
            run_trial(trial)
        after = globals_now()
        assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}


def test_a_repeated_sequence_gives_the_same_weights_as_the_first(trials: list[dict[str, Any]]) -> None:
    def sequence() -> list[dict[str, str]]:
        found = []
        for trial in trials:
            with ds.train.isolated_run():
                found.append(digest(run_trial(trial)))
        return found

    first, again = sequence(), sequence()
    assert first == again
    # each trial built its own module with its own environment: b has no first bias, c is a's width again
    assert [len(d) for d in first] == [4, 3, 4]
    assert first[0]["0.weight"].startswith("(16, 8)") and first[1]["0.weight"].startswith("(12, 8)")
    assert first[2]["0.weight"].startswith("(16, 8)")


def test_without_the_scope_the_trials_leak_into_each_other(trials: list[dict[str, Any]]) -> None:
    # the control: what the scope prevents is real (b builds a's stale module, c sees b's TRIAL_WIDTH)
    saved_path, saved_env = list(sys.path), dict(os.environ)
    try:
        found = [digest(run_trial(t)) for t in trials]
    finally:
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        sys.modules.pop("trial_model", None)
        torch.use_deterministic_algorithms(False)
    assert len(found[1]) == 4  # a's module (with its first bias), not b's own
    assert found[2]["0.weight"].startswith("(12, 8)")  # b's environment


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_group() -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=__import__("datetime").timedelta(seconds=30))  # fmt: skip


def test_a_process_group_the_run_created_is_destroyed_on_exit() -> None:
    assert not dist.is_initialized()
    with ds.train.isolated_run():
        _init_group()
        assert dist.is_initialized()
    assert not dist.is_initialized()


def test_a_process_group_that_existed_before_is_left_alone() -> None:
    _init_group()
    try:
        with ds.train.isolated_run():
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_globals_come_back_when_the_run_raises(tmp_path: Path) -> None:
    before = globals_now()
    with pytest.raises(RuntimeError, match="trial failed"), ds.train.isolated_run():
        ds.seed_everything(7, deterministic=True)
        sys.path.insert(0, str(tmp_path))
        os.environ["TRIAL_ONLY"] = "1"
        raise RuntimeError("trial failed")
    assert globals_now() == before
