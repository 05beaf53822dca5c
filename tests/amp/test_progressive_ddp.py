"""Progressive precision under data parallelism: 2 gloo ranks on 127.0.0.1 decide promotions together,
so the policy state a checkpoint saves (from rank 0) is every rank's state."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from deepseek.amp import GradScaler, ProgressivePrecision

WORLD = 2


def train_rank(rank: int, port: int, out_dir: str) -> None:
    """Three steps on this rank's own batches; rank 1 alone sees an inf gradient in the last layer."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    store = dist.TCPStore("127.0.0.1", port, WORLD, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        policy = ProgressivePrecision(
            model, scaler=GradScaler(enabled=False), patience=2, warmup=1, process_group=dist.group.WORLD
        )
        data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard, as under DDP
        for _ in range(3):
            with policy.autocast():
                loss = model(torch.randn(4, 8, generator=data)).float().pow(2).mean()
            loss.backward()
            if rank == 1:
                model[2].weight.grad[0, 0] = float("inf")
            policy.observe()
            model.zero_grad()
        torch.save(policy.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_agree_on_promotions_when_one_rank_sees_a_bad_gradient(tmp_path):
    # The test hosts the rendezvous store on a port the OS picks: no port guessed, none taken in between.
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False)
    ctx = mp.start_processes(train_rank, args=(store.port, str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=5):
            assert time.monotonic() < deadline, "the ranks did not finish"
    finally:
        for proc in ctx.processes:  # a hung or failed run leaves no rank behind
            if proc.is_alive():
                proc.kill()
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert states[0]["modules"]["2"]["promoted"], states[0]  # rank 1's overflow counts on rank 0 too
    assert states[0] == states[1]
