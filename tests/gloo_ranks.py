"""Run a function on N spawned gloo ranks on 127.0.0.1 and collect what each returns.

One helper for every multi-process test, so each gets the same guarantees:
- the parent hosts the rendezvous store on a port the OS picks (no port guessed, none taken in between);
- every rank's result or traceback comes back through a queue; a rank that dies without a word, or a run
  past its deadline, fails the test and leaves no process behind;
- each rank destroys its process group and collects garbage before it exits. Without the collection a
  process group still referenced from a reference cycle (a model's hooks, a precision policy) is
  destroyed during interpreter finalization, and gloo's worker threads then abort the process about one
  run in ten ("terminate called without an active exception").
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


def run_ranks(worker: Callable[..., Any], world: int, *args: Any, timeout_s: float = 120.0) -> dict[int, Any]:
    """``worker(rank, *args)`` on ``world`` spawned ranks inside one gloo group; returns ``{rank: result}``.

    ``worker`` must be a module-level function and its result picklable (plain lists, not tensors that
    would share file descriptors). A rank that raises fails the test with that rank's traceback.
    """
    import torch.distributed as dist

    store = dist.TCPStore(
        "127.0.0.1", 0, None, is_master=True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
    )
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_rank_main, args=(worker, rank, world, store.port, timeout_s, results, args))
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
    worker: Callable[..., Any], rank: int, world: int, port: int, timeout_s: float, results: Any, args: tuple
) -> None:
    import faulthandler

    import torch
    import torch.distributed as dist

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
