"""What timing and counting the gradient all-reduce costs: DDP's built-in all-reduce vs ds's default hook
(``CommHook()``: the same flat all-reduce, timed and counted for the ``comm/*`` metrics) vs torch's own Python
``allreduce_hook`` (the cost of any Python hook), side by side in one run.

    python benchmarks/comm_overhead.py [--nproc 2] [--rounds 25] [--steps 30] [--hidden 1024]

``--nproc`` gloo ranks on 127.0.0.1 train the same MLP (``--hidden`` wide, 2 hidden layers; with 1024,
1,575,168 parameters in 2 DDP buckets) with SGD on in-memory batches. Each round trains ``--steps`` steps with each of
the three variants in turn (a fresh DDP model each, the order rotating every round); a variant's time is the
median step time over its rounds. Printed: each median and the ratios; target: the hook within 1% of torch's
own Python hook (what measuring adds) and the per-bucket cost of the accounting alone, timed in a loop.
On a shared machine the step times drift by more than 1% between rounds; the accounting's own cost is the
stable number.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

VARIANTS = ("builtin", "ds CommHook", "torch allreduce_hook")


def _model(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 256))  # fmt: skip


def _steps(variant: str, hidden: int, steps: int, batches: list) -> tuple[float, float]:
    """Median seconds per step of ``steps`` SGD steps of a fresh DDP model with ``variant``'s all-reduce, and the
    buckets all-reduced per step (counted by ds's hook; 0 for the others)."""
    from deepseek.distributed.hooks import CommHook

    ddp = DistributedDataParallel(_model(hidden))
    hook = None
    if variant == "ds CommHook":
        hook = CommHook().install(ddp)
    elif variant == "torch allreduce_hook":
        ddp.register_comm_hook(None, allreduce_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 3):  # 3 warm-up steps (DDP rebuilds its buckets after the first)
        x, y = batches[i % len(batches)]
        start = time.perf_counter()
        opt.zero_grad()
        F.mse_loss(ddp(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    buckets = hook.pop_step_stats()["calls"] / (steps + 3) if hook is not None else 0.0
    return statistics.median(times[3:]), buckets


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(64, 256, generator=gen), torch.randn(64, 256, generator=gen)) for _ in range(8)]
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]  # rotate: no variant always runs first
        for variant in order:
            seconds, buckets = _steps(variant, args.hidden, args.steps, batches)
            medians[variant].append(seconds)
            out["buckets"] = max(out.get("buckets", 0.0), buckets)
    if rank == 0:
        out.update({v: statistics.median(m) for v, m in medians.items()})
    dist.destroy_process_group()


def accounting_cost(calls: int = 20000) -> float:
    """Seconds per bucket of what the hook adds around the all-reduce: two clock reads, a lock, the byte sums."""
    from deepseek.distributed.counts import CommCounts
    from deepseek.distributed.hooks import CommHook

    hook = CommHook.__new__(CommHook)  # the accounting alone, no process group needed
    hook._lock, hook._intervals, hook._folded_s, hook._reach = threading.Lock(), [], 0.0, float("-inf")
    hook._counts = CommCounts()
    sent = {"intra": 1000, "inter": 0}

    class Done:
        def value(self) -> None:
            return None

    done = Done()
    start = time.perf_counter()
    for _ in range(calls):
        hook._finished(time.perf_counter(), sent, sent, done)
    hook.pop_step_stats()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(args.nproc, port, args, out), nprocs=args.nproc)
        result = dict(out)
    params = sum(p.numel() for p in _model(args.hidden).parameters())
    print(f"{args.nproc} gloo ranks, MLP 256-{args.hidden}-{args.hidden}-256 ({params:,} parameters), SGD, "
          f"{args.rounds} rounds x {args.steps} steps; median step time")  # fmt: skip
    for v in VARIANTS:
        print(f"  {v:22s} {result[v] * 1e3:8.3f} ms   {result[v] / result['builtin']:.4f}x builtin")
    ratio = result["ds CommHook"] / result["torch allreduce_hook"]
    per_bucket = accounting_cost()
    print(f"ds CommHook / torch allreduce_hook: {ratio:.4f}x (what timing and counting add to a Python hook; target "
          f"<= 1.01x: {'met' if ratio <= 1.01 else 'missed'})")
    buckets = result["buckets"]
    print(f"accounting alone: {per_bucket * 1e6:.2f} us per bucket x {buckets:.0f} buckets a step = "
          f"{buckets * per_bucket / result['builtin']:.3%} of the built-in step (target < 1%: "
          f"{'met' if buckets * per_bucket / result['builtin'] < 0.01 else 'missed'})")


if __name__ == "__main__":
    main()
