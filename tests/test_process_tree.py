"""The process-tree helpers: a timed-out or failed subprocess leaves none of its processes behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests import process_tree
from tests.conftest import run_cli

# Starts a grandchild in a session of its own (as torchrun starts its ranks) that sleeps forever, holding
# the child's stdout open; the grandchild writes its pid to PIDFILE before the child goes on.
SPAWN_GRANDCHILD = """
import os, subprocess, sys
pidfile = {pidfile!r}
grandchild = subprocess.Popen(  # -S: no sitecustomize, so the grandchild starts nothing itself
    [sys.executable, "-S", "-c", "import os, sys, time; open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
     "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(100000)", pidfile],
    start_new_session=True,
)
while not os.path.exists(pidfile):
    os.sched_yield()
{then}
"""


def _outlives(pidfile: Path, wait_s: float = 10.0) -> bool:
    """Whether the grandchild named in ``pidfile`` is still running ``wait_s`` after its tree was killed."""
    try:
        proc = psutil.Process(int(pidfile.read_text()))
        proc.wait(timeout=wait_s)
    except psutil.NoSuchProcess:
        return False
    except psutil.TimeoutExpired:
        proc.kill()  # the test fails; this one process, which the test started, goes anyway
        return True
    return False


@pytest.mark.slow  # waits out a timeout
def test_run_cli_timeout_kills_the_orphaned_grandchild(tmp_path: Path):
    # sitecustomize runs before ``-m deepseek``: the child starts the grandchild and exits at once, so the
    # grandchild is an orphan in its own session that still holds the pipe run_cli reads.
    pidfile = tmp_path / "grandchild.pid"
    (tmp_path / "sitecustomize.py").write_text(SPAWN_GRANDCHILD.format(pidfile=str(pidfile), then="os._exit(0)"))
    with pytest.raises(subprocess.TimeoutExpired):
        run_cli("list", "models", env={"PYTHONPATH": str(tmp_path)}, timeout=3)
    assert not _outlives(pidfile), "the grandchild outlived run_cli's timeout"


@pytest.mark.slow  # waits out a timeout
def test_run_kills_a_hung_child_and_its_grandchild(tmp_path: Path):
    pidfile = tmp_path / "grandchild.pid"
    script = SPAWN_GRANDCHILD.format(pidfile=str(pidfile), then="print('started', flush=True); sys.stdin.read()")
    with pytest.raises(subprocess.TimeoutExpired) as info:
        process_tree.run([sys.executable, "-c", textwrap.dedent(script)], timeout=3, stdin=subprocess.PIPE)
    assert "started" in info.value.output
    assert not _outlives(pidfile), "the grandchild outlived the timeout"


def test_kill_tree_ends_a_running_child_and_its_grandchild_in_another_session(tmp_path: Path):
    pidfile = tmp_path / "grandchild.pid"
    script = SPAWN_GRANDCHILD.format(pidfile=str(pidfile), then="print('started', flush=True); sys.stdin.read()")
    child = process_tree.popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert child.stdout.readline() == "started\n"
    assert process_tree.kill_tree(child) == []
    assert child.returncode is not None and not _outlives(pidfile, wait_s=0)
