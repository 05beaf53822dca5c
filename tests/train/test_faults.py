"""Faults around a run: ranks die with the process that started them, and a run directory has one writer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deepseek.train.run_lock import RunDirLockedError, check_run_dir_unlocked, lock_run_dir, unlock_run_dir
from tests import process_tree
from tests.conftest import REPO, run_cli, write_yaml

WAIT_S = 60  # an upper bound for the polls below, never a synchronisation


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_process_that_asked_to_die_with_its_parent_is_gone_after_the_parent_is_killed():
    child = textwrap.dedent("""
        import sys, time
        from deepseek.train.distributed import die_with_parent
        assert die_with_parent()
        print("ready", flush=True)
        time.sleep(600)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {child!r}])
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    proc = process_tree.popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        child_pid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ready"  # the child's output: it armed the signal
        proc.kill()  # SIGKILL to the parent alone: the child must follow by itself
        proc.wait(timeout=WAIT_S)
        assert not process_tree.wait_gone([child_pid], WAIT_S), "the child outlived its killed parent"
    finally:
        process_tree.kill_tree(proc)  # the child inherits the parent's tree marker


HOLDER = """
import sys, time
from deepseek.train.run_lock import lock_run_dir
lock_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def _tiny_config(tmp_path: Path) -> Path:
    return write_yaml(
        tmp_path / "cfg.yaml",
        {
            "model": {"name": "simple_cnn", "width": 4},
            "data": {"name": "digits", "batch_size": 64},
            "train": {"max_steps": 1},
            "logging": {"progress": "off", "tensorboard": False},
        },
    )


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_holds_the_run_dir_and_kill_9_frees_it(tmp_path):
    run_dir = tmp_path / "run"
    holder = process_tree.popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                                env=_env())  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirLockedError, match=str(holder.pid)):
            check_run_dir_unlocked(run_dir)

        r = run_cli("train", str(_tiny_config(tmp_path)), "--run-dir", str(run_dir))
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "in use by another" in lines[0], r.stderr
        assert not (run_dir / "config.yaml").exists()  # refused before writing anything

        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait(timeout=WAIT_S)
        lock_run_dir(run_dir)
        unlock_run_dir(run_dir)
    finally:
        process_tree.kill_tree(holder)


@pytest.mark.slow
def test_the_lock_is_reentrant_in_one_process_and_released_by_the_last_unlock(tmp_path):
    run_dir = tmp_path / "run"
    lock_run_dir(run_dir)
    lock_run_dir(run_dir)  # the CLI, then the Trainer
    unlock_run_dir(run_dir)
    probe = [sys.executable, "-c", "import sys; from deepseek.train.run_lock import check_run_dir_unlocked as c; "
             "c(sys.argv[1])", str(run_dir)]  # fmt: skip
    assert subprocess.run(probe, env=_env(), capture_output=True, timeout=WAIT_S).returncode != 0
    unlock_run_dir(run_dir)
    r = subprocess.run(probe, env=_env(), capture_output=True, text=True, timeout=WAIT_S)
    assert r.returncode == 0, r.stderr
