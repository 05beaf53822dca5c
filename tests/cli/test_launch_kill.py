"""Killing ``deepseek launch`` ends its torchrun agent and every rank: nothing keeps writing the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek.train.run_lock import RunDirLockedError, lock_run_dir, unlock_run_dir
from tests import process_tree
from tests.conftest import REPO, write_yaml

WAIT_S = 180  # an upper bound for the polls below, never a synchronisation


def _lock_is_free(run_dir: Path) -> bool:
    try:
        lock_run_dir(run_dir)
    except RunDirLockedError:
        return False
    unlock_run_dir(run_dir)
    return True


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_kill_9_of_deepseek_launch_ends_the_agent_and_both_ranks(tmp_path):
    cfg = write_yaml(
        tmp_path / "cfg.yaml",
        {
            "model": {"name": "simple_cnn", "width": 4},
            "data": {"name": "digits", "batch_size": 16},
            "train": {"max_steps": 1000000, "val_every_epochs": None},
            "checkpoint": {"every_steps": 20, "keep_last": 2},
            "logging": {"progress": "off", "tensorboard": False},
        },
    )
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DS_DIST_BACKEND": "gloo", "MASTER_ADDR": "127.0.0.1"}
    launch = process_tree.popen(
        [sys.executable, "-m", "deepseek", "launch", "--nproc", "2", str(cfg), "--run-dir", str(run_dir)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # training is under way: a checkpoint exists, and launcher + agent + 2 ranks are running
        started = process_tree.poll(
            lambda: any((run_dir / "checkpoints").glob("step-*")) or launch.poll() is not None, WAIT_S
        )
        assert started and launch.poll() is None, launch.stderr.read() if launch.poll() is not None else "no start"
        # the launcher, the torchrun agent and the ranks: every process whose command line names run_dir
        pids = process_tree.processes_naming(str(run_dir))
        assert launch.pid in pids and len(pids) >= 4, [process_tree.command_line(p) for p in pids]
        launch.kill()  # SIGKILL to the launcher alone: the agent and the ranks must follow by themselves
        launch.wait(timeout=WAIT_S)
        alive = process_tree.wait_gone(pids, WAIT_S)
        assert not alive, [process_tree.command_line(p) for p in alive]
        # A leader shows as a zombie while its other threads still exit; the lock goes with the last one.
        assert process_tree.poll(lambda: _lock_is_free(run_dir), WAIT_S), "a writer still holds the run directory"
    finally:
        process_tree.kill_tree(launch)  # the agent and ranks inherit the launcher's tree marker
