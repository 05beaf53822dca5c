"""Progressive precision under data parallelism: 2 gloo ranks on 127.0.0.1 decide promotions together,
so the policy state a checkpoint saves (from rank 0) is every rank's state."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from deepseek.amp import GradScaler, ProgressivePrecision
from tests.gloo_ranks import run_ranks

WORLD = 2


def train_rank(rank: int) -> dict:
    """Three steps on this rank's own batches; rank 1 alone sees an inf gradient in the last layer."""
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
    return policy.state_dict()


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_agree_on_promotions_when_one_rank_sees_a_bad_gradient():
    states = run_ranks(train_rank, WORLD, timeout_s=120)
    assert states[0]["modules"]["2"]["promoted"], states[0]  # rank 1's overflow counts on rank 0 too
    assert states[0] == states[1]
