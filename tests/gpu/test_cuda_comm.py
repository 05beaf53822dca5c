"""Issue 18's GPU check: the DDP communication hooks on CUDA tensors over NCCL (a group of one rank: the legs
are degenerate, but the hooks' CUDA paths run: the async all-reduce future, fp16/bf16 casts with their residuals
on the GPU, torch's PowerSGD on CUDA buckets) and their state saved and loaded.

Marked ``gpu``; skipped without CUDA (``benchmarks/device_suite.sh`` runs it on a GPU machine).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run benchmarks/device_suite.sh on a GPU)"),
]


@pytest.mark.parametrize("compression", ["none", "fp16", "bf16", "powersgd"])
def test_comm_hook_trains_on_cuda_over_nccl(tmp_path: Path, compression: str):
    from torch.nn.parallel import DistributedDataParallel

    from deepseek.distributed import Topology
    from deepseek.distributed.hooks import CommHook

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1,
                            device_id=device)  # fmt: skip
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
        ddp = DistributedDataParallel(model, device_ids=[0])
        hook = CommHook(Topology("ring", ring_size=1), compression, powersgd_rank=2).install(ddp)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        x, y = torch.randn(64, 32, device=device), torch.randint(0, 4, (64,), device=device)
        losses = []
        for _ in range(20):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ddp(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] / 2, losses
        stats = hook.pop_step_stats()
        assert stats["calls"] >= 20 and stats["seconds"] > 0
        buffer = io.BytesIO()
        torch.save(hook.state_dict(), buffer)
        buffer.seek(0)
        hook.load_state_dict(torch.load(buffer, weights_only=True))
    finally:
        dist.destroy_process_group()
