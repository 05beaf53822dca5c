"""CUDA checks, prepared once and run where a GPU is (``benchmarks/device_suite.sh``, ``pytest -m gpu``).

Every test here is marked ``gpu`` and skips without CUDA. They run in one process: NCCL gets a
process group of one (world 1, a FileStore in the test's tmp dir, so no port is needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import deepseek as ds
from deepseek.train import distributed as ds_dist
from deepseek.train.distributed import DistInfo, init_distributed, resolve_device
from deepseek.train.evaluate import evaluate
from deepseek.train.metrics import Accuracy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run benchmarks/device_suite.sh on a GPU)"),
]


def _batches(n: int = 4, batch: int = 16, device: str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of ((batch, 8) inputs, (batch,) labels in [0, 4)) whose label is learnable."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 8, generator=g)
        out.append((x.to(device), (x[:, :4].argmax(1)).to(device)))
    return out


def _mlp() -> nn.Module:
    """(N, 8) -> (N, 4) logits."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.fixture
def nccl_group_of_one(tmp_path: Path):
    """A default NCCL group of one process, bound to cuda:0; destroyed afterwards."""
    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    store = dist.FileStore(str(tmp_path / "nccl_store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=device)
    try:
        yield device
    finally:
        dist.destroy_process_group()


class _ReduceEvenInAWorldOfOne(DistInfo):
    """DistInfo whose collectives run although the world is one, so NCCL actually sees them."""

    @property
    def enabled(self) -> bool:
        return True


def test_nccl_all_reduce_and_a_ddp_step(nccl_group_of_one: torch.device) -> None:
    device = nccl_group_of_one
    t = torch.arange(4, dtype=torch.float32, device=device)
    dist.all_reduce(t)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]  # the sum over a world of one is the tensor itself

    model = _mlp().to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index])
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    x, y = _batches(1, device=str(device))[0]
    nn.functional.cross_entropy(ddp(x), y).backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in model.parameters())
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_nccl_validation_reduces_metrics_on_the_gpu(nccl_group_of_one: torch.device, monkeypatch) -> None:
    device = nccl_group_of_one
    info = init_distributed(device)  # joins the existing group as it is
    assert info.comm_device == device
    forced = _ReduceEvenInAWorldOfOne(info.rank, info.local_rank, info.world_size, info.comm_device)
    seen: list[torch.device] = []
    real_all_reduce = dist.all_reduce

    def recording_all_reduce(t: torch.Tensor, *args, **kwargs):
        seen.append(t.device)
        return real_all_reduce(t, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", recording_all_reduce)
    model = _mlp().to(device)

    def eval_step(m: nn.Module, batch):
        x, y = batch
        out = m(x)
        return nn.functional.cross_entropy(out, y), out, y

    def no_autocast():
        return torch.autocast("cuda", enabled=False)

    data = _batches(3)
    plain = evaluate(model, data, eval_step, [Accuracy()], device=device, autocast=no_autocast)
    assert not seen  # a world of one skips the collective
    reduced = evaluate(model, data, eval_step, [Accuracy()], device=device, autocast=no_autocast, dist=forced)
    assert seen and all(d.type == "cuda" for d in seen)  # NCCL has no CPU collectives
    assert reduced == pytest.approx(plain)  # a world of one: the sums are unchanged


@pytest.mark.parametrize("precision", ["fp16-mixed", "bf16-mixed"])
def test_trainer_mixed_precision_on_cuda(precision: str, tmp_path: Path) -> None:
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = _mlp()
    trainer = ds.Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-2), precision=precision, device="cuda",
                         max_epochs=3, run_dir=tmp_path / "run", tensorboard=False, progress="off")  # fmt: skip
    summary = trainer.fit(_batches(8), _batches(2))
    assert next(model.parameters()).device.type == "cuda"
    scaler = trainer.policy.scaler
    if precision == "fp16-mixed":
        assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
        assert scaler.get_scale() > 0  # the scaler ran: a finite, positive scale after its updates
    else:
        assert scaler is None  # bf16 has fp32's range: no loss scaling
    assert summary["val"]["accuracy"] > 0.5  # learnable labels: mixed precision still trains


def test_jit_compiles_on_cuda() -> None:
    model = _mlp().cuda()
    x = torch.randn(16, 8, device="cuda")
    expected = model(x)
    ds.jit(model)
    out = model(x)
    report = ds.jit_report(model)
    assert report["choice"] == "compiled", report  # inductor has Triton on CUDA: no eager fallback
    assert out.device.type == "cuda"
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_each_rank_binds_its_own_gpu(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    # A shared config's "cuda:0" means this rank's GPU; with one visible GPU per rank that is cuda:0.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:0") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)  # one process: LOCAL_RANK fills the index


def test_trainer_binds_the_process_gpu(nccl_group_of_one: torch.device, tmp_path: Path) -> None:
    model = _mlp()
    trainer = ds.Trainer(model, max_steps=2, max_epochs=None, device="cuda", run_dir=tmp_path / "run",
                         tensorboard=False, progress="off")  # fmt: skip
    trainer.fit(_batches(2), None)
    assert next(model.parameters()).device == nccl_group_of_one
    assert ds_dist.comm_device("nccl", torch.device("cpu")) == nccl_group_of_one  # a CPU-side caller's NCCL device


@pytest.mark.parametrize("spec", [{"zero_stage": 1}, {"zero_stage": 2}, {"zero_stage": 3}, {"zero_stage": 3, "meta_init": True}])
def test_fsdp_strategies_on_nccl_at_world_one(spec: dict, tmp_path: Path) -> None:
    """Issue 15's GPU check: each fsdp stage (and a model built on meta) trains on cuda with NCCL in a plain process
    (the strategy makes its one-rank group and fit() removes it), with a sharded checkpoint under ZeRO-2/3, and
    ends with the weights of the same run on one device (meta_init: its own init, so only finite weights)."""
    from safetensors.torch import load_file

    from deepseek.train.meta_init import build_on_meta

    def run(strategy: object, name: str, meta: bool = False) -> dict[str, torch.Tensor]:
        build = lambda: ds.models.build("gpt2", vocab_size=64, max_positions=16, dim=32, depth=2, heads=2)  # noqa: E731
        torch.manual_seed(0)
        model = build_on_meta(build) if meta else build()
        ids = torch.randint(0, 64, (4, 9), generator=torch.Generator().manual_seed(1))
        batches = [(ids[:, :-1].cuda(), ids[:, 1:].cuda())] * 4
        loss = lambda logits, y: nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())  # noqa: E731
        trainer = ds.Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-2), loss_fn=loss, max_steps=4,
                             max_epochs=None, strategy=strategy, device="cuda", metrics=(), run_dir=tmp_path / name,
                             tensorboard=False, progress="off", checkpoint_every_steps=2)  # fmt: skip
        trainer.fit(batches)
        assert not dist.is_initialized()  # the strategy's own group is gone
        return load_file(tmp_path / name / "final" / "model.safetensors")

    got = run({"name": "fsdp", **spec}, "fsdp", meta=spec.get("meta_init", False))
    if spec.get("meta_init"):
        assert all(t.isfinite().all() for t in got.values())
        return
    if spec["zero_stage"] > 1:
        assert any((tmp_path / "fsdp" / "checkpoints").glob("step-*/shards/.metadata"))  # sharded under ZeRO-2/3
    expected = run("single_device", "one")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-4, rtol=1e-4, msg=name)
