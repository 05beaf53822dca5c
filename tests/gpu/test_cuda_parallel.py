"""Issue 16's GPU checks: tensor and pipeline parallelism at world size 1 on NCCL (degenerate degrees, but the
code paths run on CUDA: DTensor's plan on a one-rank tp mesh, the pipeline schedule on one stage).

Marked ``gpu``; skipped without CUDA (``benchmarks/device_suite.sh`` runs them on a GPU machine).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import deepseek as ds

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run benchmarks/device_suite.sh on a GPU)"),
]

TINY = {"vocab_size": 64, "max_positions": 16, "dim": 32, "depth": 2, "heads": 2}


def _ids() -> torch.Tensor:
    return torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(1))


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@pytest.mark.parametrize("sequence_parallel, loss_parallel", [(False, False), (True, True)])
def test_gpt2_tensor_parallel_plan_on_a_one_rank_nccl_mesh(tmp_path: Path, sequence_parallel: bool, loss_parallel: bool):
    """gpt2's plan on a tp mesh of one CUDA rank (NCCL) trains 5 AdamW steps like the unsharded model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import loss_parallel as vocab_sharded_loss

    from deepseek.models.parallelize import plan_for_model

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1,
                            device_id=device)  # fmt: skip
    try:
        ids = _ids()[:, :8].to(device)  # a sequence length tp divides

        def train(model: nn.Module, sharded: bool) -> list[float]:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-6)
            losses = []
            for _ in range(5):
                opt.zero_grad()
                if sharded and loss_parallel:
                    with vocab_sharded_loss():
                        loss = _lm_loss(model(ids)[:, :-1], ids[:, 1:])
                        loss.backward()
                    loss = loss.full_tensor()
                else:
                    loss = _lm_loss(model(ids)[:, :-1], ids[:, 1:])
                    loss.backward()
                opt.step()
                losses.append(loss.item())
            return losses

        torch.manual_seed(0)
        plain = ds.models.build("gpt2", **TINY).to(device)
        torch.manual_seed(0)
        sharded = ds.models.build("gpt2", **TINY).to(device)
        mesh = init_device_mesh("cuda", (1,), mesh_dim_names=("tp",))
        plan_for_model(sharded)(sharded, mesh, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)
        assert any(hasattr(p, "device_mesh") for p in sharded.parameters())  # DTensors on the NCCL mesh
        torch.testing.assert_close(torch.tensor(train(sharded, True)), torch.tensor(train(plain, False)),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_pipeline_strategy_at_world_one_on_nccl(tmp_path: Path, schedule: str):
    """The pipeline strategy in a plain CUDA process (its own NCCL group of one, one stage, the schedule owning
    the step) ends with the weights of the same run on one device."""
    from safetensors.torch import load_file

    ids = _ids()
    batches = [(ids[:, :-1].cuda(), ids[:, 1:].cuda())] * 4

    def run(strategy: object, name: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = ds.models.build("gpt2", **TINY)
        # fp32 (precision auto is bf16-mixed on an H200, whose rounding differs between 2 micro-batches and one
        # batch) and SGD, whose step is linear in the gradient (AdamW divides tiny gradients by their own size)
        trainer = ds.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=_lm_loss, max_steps=4,
                             max_epochs=None, strategy=strategy, device="cuda", metrics=(), precision="fp32",
                             run_dir=tmp_path / name, tensorboard=False, progress="off")  # fmt: skip
        trainer.fit(batches)
        assert not dist.is_initialized()
        return load_file(tmp_path / name / "final" / "model.safetensors")

    got = run({"name": "pipeline", "pp": 1, "schedule": schedule, "microbatches": 2}, "pp")
    expected = run("single_device", "one")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
