"""Killing ``deepseek launch`` ends its torchrun agent and every rank: nothing keeps writing the run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepseek.train.run_lock import RunDirLockedError, lock_run_dir, unlock_run_dir
from tests.conftest import REPO, write_yaml

WAIT_S = 180  # an upper bound for the polls below, never a synchronisation


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _processes_of(run_dir: Path) -> list[int]:
    """The launcher, the torchrun agent and the ranks: every live process whose command line names ``run_dir``."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and str(run_dir) in _cmdline(pid) and _alive(pid)]


def _lock_is_free(run_dir: Path) -> bool:
    try:
        lock_run_dir(run_dir)
    except RunDirLockedError:
        return False
    unlock_run_dir(run_dir)
    return True


def _poll(condition, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


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
    launch = subprocess.Popen(
        [sys.executable, "-m", "deepseek", "launch", "--nproc", "2", str(cfg), "--run-dir", str(run_dir)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    pids: list[int] = []
    try:
        # training is under way: a checkpoint exists, and launcher + agent + 2 ranks are running
        started = _poll(lambda: any((run_dir / "checkpoints").glob("step-*")) or launch.poll() is not None)
        assert started and launch.poll() is None, launch.stderr.read() if launch.poll() is not None else "no start"
        pids = _processes_of(run_dir)
        assert launch.pid in pids and len(pids) >= 4, [_cmdline(p) for p in pids]
        launch.kill()
        launch.wait(timeout=WAIT_S)
        assert _poll(lambda: not any(_alive(p) for p in pids)), [_cmdline(p) for p in pids if _alive(p)]
        # A leader shows as a zombie while its other threads still exit; the lock goes with the last one.
        assert _poll(lambda: _lock_is_free(run_dir)), "a writer still holds the run directory"
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        launch.kill()
        launch.wait(timeout=WAIT_S)
