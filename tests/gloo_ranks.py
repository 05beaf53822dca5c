"""Run a function on N gloo ranks on 127.0.0.1 and collect what each returns.

One helper for every multi-process test, so each gets the same guarantees:
- the parent hosts the rendezvous store on a port the OS picks (no port guessed, none taken in between);
- every rank's result or traceback comes back through a queue; a rank that dies without a word, or a run
  past its deadline, fails the test and leaves no process behind;
- each rank destroys its process group and collects garbage before it exits. Without the collection a
  process group still referenced from a reference cycle (a model's hooks, a precision policy) is
  destroyed during interpreter finalization, and gloo's worker threads then abort the process about one
  run in ten ("terminate called without an active exception").

The ranks start from a "forkserver", not "spawn": a spawned rank re-imports torch and deepseek (about 2.5 s of
CPU each, most of a short test), while the forkserver imports them once per test session and forks each rank
from that state. Forking is safe there: the forkserver only imports (no torch op runs in it, so no OpenMP pool
exists; numpy's OpenBLAS thread is stopped by OpenBLAS's own fork handler; the forkserver was seen with one
thread when it forked ranks) and each rank creates its gloo group after the fork. A forked rank starts with the
forkserver's environment, so it is handed the test's current one (``monkeypatch.setenv`` reaches it as with spawn).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

# imported once in the forkserver, inherited by every rank; what the multi-process tests' workers use
_PRELOAD = ["torch", "torch.distributed", "torch.distributed.fsdp", "torch.distributed.pipelining", "deepseek",
            "pytest", "tests.gloo_ranks"]


def run_ranks(worker: Callable[..., Any], world: int, *args: Any, timeout_s: float = 120.0) -> dict[int, Any]:
    """``worker(rank, *args)`` on ``world`` forked ranks inside one gloo group; returns ``{rank: result}``.

    ``worker`` must be a module-level function and its result picklable (plain lists, not tensors that
    would share file descriptors). A rank that raises fails the test with that rank's traceback.
    """
    import torch.distributed as dist

    store = dist.TCPStore(
        "127.0.0.1", 0, None, is_master=True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
    )
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)  # takes effect when the session's forkserver starts, no-op after
    results = ctx.Queue()
    env = dict(os.environ)
    procs = [
        ctx.Process(target=_rank_main, args=(worker, rank, world, store.port, timeout_s, results, args, env))
        for rank in range(world)
    ]
    for proc in procs:
        proc.start()
    by_rank: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(by_rank) < world:
            try:
                rank, ok, value = results.get(timeout=1.0)
                by_rank[rank] = (ok, value)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                assert not dead, f"a rank died without reporting (exit codes {dead})"
                assert time.monotonic() < deadline, f"the ranks did not finish in {timeout_s:.0f} s"
    finally:
        for proc in procs:  # a hung or failed run leaves no rank behind
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    failed = {rank: value for rank, (ok, value) in by_rank.items() if not ok}
    assert not failed, "\n".join(f"rank {rank} failed:\n{tb}" for rank, tb in sorted(failed.items()))
    return {rank: value for rank, (_, value) in sorted(by_rank.items())}


def _rank_main(
    worker: Callable[..., Any], rank: int, world: int, port: int, timeout_s: float, results: Any, args: tuple,
    env: dict[str, str],
) -> None:
    import faulthandler

    import torch
    import torch.distributed as dist

    os.environ.clear()  # the test's environment at run_ranks, not the forkserver's at its start
    os.environ.update(env)
    faulthandler.enable()  # a rank that crashes (SIGSEGV) prints its Python stacks to the test's output
    torch.set_num_threads(1)  # the ranks share the machine's cores
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's own connections stay on the loopback too
    try:
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=timeout_s))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
        try:
            value = worker(rank, *args)
        finally:
            dist.destroy_process_group()
            del store
            gc.collect()  # see the module docstring
        results.put((rank, True, value))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
