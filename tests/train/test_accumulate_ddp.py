"""``GradientAccumulator`` under DDP on two gloo ranks with different sample counts per rank: the step
equals one big batch of all ranks' samples (the window's count is summed over ranks)."""

from __future__ import annotations

import os
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

WORLD = 2
TIMEOUT_S = 120
# rank -> its micro-batches (slices of the shared data): 6 samples on rank 0, 4 on rank 1
MICRO = {0: [slice(0, 3), slice(3, 6)], 1: [slice(6, 8), slice(8, 10)]}


def _model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))


def _worker(rank: int, port: int, results: mp.Queue) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        from deepseek.train.accumulate import GradientAccumulator

        store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=False, timeout=timedelta(seconds=TIMEOUT_S))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S))
        model, x, y = _model_and_data()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        accumulator = GradientAccumulator(accum_steps=2)
        stepped = 0
        for s in MICRO[rank]:
            with accumulator.accumulate(ddp):
                accumulator.backward(nn.functional.cross_entropy(ddp(x[s]), y[s]), batch_size=len(y[s]))
            stepped += accumulator.step(ddp, opt)
        dist.destroy_process_group()
        results.put((rank, stepped, [p.detach().tolist() for p in model.parameters()]))  # plain lists: no shared fds
    except Exception:
        results.put((rank, -1, traceback.format_exc()))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_with_uneven_sample_counts_step_like_one_big_batch():
    store = dist.TCPStore(
        "127.0.0.1", 0, None, is_master=True, timeout=timedelta(seconds=TIMEOUT_S), wait_for_workers=False
    )
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(rank, store.port, results)) for rank in range(WORLD)]
    for p in procs:
        p.start()
    try:
        by_rank = {rank: (stepped, params) for rank, stepped, params in (results.get(timeout=TIMEOUT_S) for _ in procs)}
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for rank, (stepped, params) in by_rank.items():
        assert stepped == 1, f"rank {rank}: {params}"
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for rank in range(WORLD):
        for got, want in zip(by_rank[rank][1], model.parameters(), strict=True):
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want.detach(), atol=1e-6, rtol=0)
