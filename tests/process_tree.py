"""Start test subprocesses so that a timeout or a failed test leaves none of their processes behind.

A plain ``subprocess.run(..., timeout=)`` kills only the child it started. ``deepseek launch`` starts
torchrun, which starts its ranks in sessions of their own, and a child may leave a daemon that outlives
it. Each process started here leads a new session and gets a marker in its environment, inherited by
everything it starts whatever session or parent that ends up with; ``kill_tree`` ends the child's
descendants, its process group and every process still carrying the marker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psutil

TREE_ENV = "DS_TEST_PROCESS_TREE"  # the marker: one fresh value for each process started here


def popen(cmd: Sequence[str], env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(cmd, env=env, **kwargs)`` in a new session, with its tree marked for ``kill_tree``."""
    token = uuid.uuid4().hex
    proc = subprocess.Popen(
        list(cmd), env={**(os.environ if env is None else env), TREE_ENV: token}, start_new_session=True, **kwargs
    )
    proc.tree_token = token  # type: ignore[attr-defined]
    return proc


def run(
    cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)``, but whatever ends it -- the
    timeout (``subprocess.TimeoutExpired`` as usual), an exception, pytest-timeout -- kills the whole tree."""
    proc = popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        kill_tree(proc)
        out, err = proc.communicate()  # every writer is gone: the pipes are at EOF
        raise subprocess.TimeoutExpired(proc.args, timeout, output=out, stderr=err) from exc
    except BaseException:
        kill_tree(proc)
        raise
    kill_tree(proc)  # the child is done; a daemon it left behind is not the next test's problem
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def marked_processes(token: str) -> list[psutil.Process]:
    """Every live process (other than this one) whose environment carries ``token``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(TREE_ENV) == token:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone, or another user's: not part of the tree
    return found


def kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL, wait_s: float = 30.0) -> list[int]:
    """Send ``sig`` to ``proc``, its descendants, its process group and every process carrying its marker.

    Waits up to ``wait_s`` for them to exit; returns the pids still alive (empty when all are gone). Safe on
    a process that has already exited: its orphans are found by the marker.
    """
    targets: dict[int, psutil.Process] = {}
    if proc.poll() is None:
        try:
            targets.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, sig)  # it leads its own session: its group is all that did not move out
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty (a pid is never reused while its group still exists)
    token = getattr(proc, "tree_token", None)
    if token is not None:
        targets.update((p.pid, p) for p in marked_processes(token))
    for p in targets.values():
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(list(targets.values()), timeout=wait_s)
    return [p.pid for p in alive]


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Whether ``condition()`` holds within ``timeout`` s, asked every ``interval`` s.

    ``timeout`` is an upper bound for a state the test waits on (a process gone, a lock free), never a
    synchronisation: the poll returns as soon as the condition holds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def is_gone(pid: int) -> bool:
    """The process has exited: no such pid, or a zombie its parent has not reaped yet (still has a pid)."""
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` s for every pid in ``pids`` to exit (see ``is_gone``); returns those still alive.

    Unlike ``psutil.wait_procs`` this works for processes that are not our children and counts a zombie as
    gone: a killed process whose parent is gone too may stay a zombie until init reaps it.
    """
    pids = list(pids)
    poll(lambda: all(is_gone(pid) for pid in pids), timeout)
    return [pid for pid in pids if not is_gone(pid)]


def command_line(pid: int) -> list[str]:
    """The arguments ``pid`` was started with; empty for a process that is gone, a zombie or another user's."""
    try:
        return psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def processes_naming(argument: str) -> list[int]:
    """Every live process (other than this one) that has ``argument`` as one of its command-line arguments."""
    return [
        proc.pid
        for proc in psutil.process_iter()
        if proc.pid != os.getpid() and argument in command_line(proc.pid) and not is_gone(proc.pid)
    ]
