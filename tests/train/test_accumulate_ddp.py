"""``GradientAccumulator`` under DDP on two gloo ranks with different sample counts per rank: the step
equals one big batch of all ranks' samples (the window's count is summed over ranks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.gloo_ranks import run_ranks

WORLD = 2
TIMEOUT_S = 120
# rank -> its micro-batches (slices of the shared data): 6 samples on rank 0, 4 on rank 1
MICRO = {0: [slice(0, 3), slice(3, 6)], 1: [slice(6, 8), slice(8, 10)]}


def _model_and_data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))


def _worker(rank: int) -> tuple[int, list]:
    """This rank's micro-batches through the accumulator; returns (optimizer steps taken, weights as lists)."""
    from deepseek.train.accumulate import GradientAccumulator

    model, x, y = _model_and_data()
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    accumulator = GradientAccumulator(accum_steps=2)
    stepped = 0
    for s in MICRO[rank]:
        with accumulator.accumulate(ddp):
            accumulator.backward(nn.functional.cross_entropy(ddp(x[s]), y[s]), batch_size=len(y[s]))
        stepped += accumulator.step(ddp, opt)
    return stepped, [p.detach().tolist() for p in model.parameters()]  # plain lists: no shared fds


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_with_uneven_sample_counts_step_like_one_big_batch():
    by_rank = run_ranks(_worker, WORLD, timeout_s=TIMEOUT_S)
    for rank, (stepped, params) in by_rank.items():
        assert stepped == 1, f"rank {rank}: {params}"
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for rank in range(WORLD):
        for got, want in zip(by_rank[rank][1], model.parameters(), strict=True):
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want.detach(), atol=1e-6, rtol=0)
