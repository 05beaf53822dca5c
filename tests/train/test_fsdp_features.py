"""Everything the Trainer does works under each ``fsdp`` stage: EMA, the scheduler, precision and logging.

The EMA case trains a tiny gpt2 in fp32 with EMA and a scheduler on 2 gloo ranks and once in this process on
the global batch: ``final/`` (written from the EMA weights) agrees to 1e-5. Under ZeRO-2/3 the EMA shadow is
sharded like the parameters (each rank holds its shard only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import deepseek as ds
from deepseek.train.strategy import ModelState
from tests.gloo_ranks import run_ranks
from tests.train.test_fsdp import PER_RANK, STEPS, _global_micro_batches, _model

EMA_DECAY = 0.8


def _decaying(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.9**step)


def _train_with_ema(run_dir: Path, batches: list, strategy, stop_at: int | None = None) -> dict:
    """10 steps with EMA and a scheduler (resuming once after ``stop_at`` steps when set); returns how the
    EMA shadow is held on this rank: its total local element count and the model's."""
    legs = [(stop_at, None), (STEPS, "auto")] if stop_at else [(STEPS, None)]
    for leg, (max_steps, resume) in enumerate(legs):
        model = _model(seed=leg)
        trainer = ds.Trainer(
            model, torch.optim.AdamW(model.parameters(), lr=1e-3), scheduler=_decaying, ema_decay=EMA_DECAY,
            loss_fn=lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten()), max_steps=max_steps,
            max_epochs=None, strategy=strategy, device="cpu", metrics=(), run_dir=run_dir, tensorboard=False,
            progress="off", checkpoint_every_minutes=None,
        )  # fmt: skip
        trainer.fit(batches, resume=resume)
    shadow = trainer.ema.shadow_tensors()
    local = sum(getattr(t, "_local_tensor", t).numel() for t in shadow)
    full = sum(t.numel() for t in shadow)
    return {"local": local, "full": full, "lr": trainer.optimizer.param_groups[0]["lr"]}


def _ema_worker(rank: int, world: int, run_dir: str, spec: dict, stop_at) -> dict:
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    batches = [(x[rows], y[rows]) for x, y in _global_micro_batches(world, 1)]
    return _train_with_ema(Path(run_dir), batches, spec, stop_at)


EMA_CASES = {"zero1": ({"zero_stage": 1}, None), "zero2": ({"zero_stage": 2}, None),
             "zero3-resume": ({"zero_stage": 3}, 5)}  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", list(EMA_CASES))
def test_ema_under_fsdp_equals_one_process(tmp_path, case):
    kwargs, stop_at = EMA_CASES[case]
    world = 2
    results = run_ranks(_ema_worker, world, world, str(tmp_path / "ranks"), {"name": "fsdp", **kwargs}, stop_at,
                        timeout_s=240)  # fmt: skip
    single = _train_with_ema(tmp_path / "one", _global_micro_batches(world, 1), "single_device")

    ours = load_file(tmp_path / "ranks" / "final" / "model.safetensors")
    theirs = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)
    raw = load_file(tmp_path / "one" / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors")
    assert any((raw[n] - theirs[n]).abs().max() > 1e-4 for n in theirs)  # final/ is the EMA, not the raw weights
    for rank in range(world):
        assert results[rank]["lr"] == pytest.approx(single["lr"])  # the schedule advanced once per step
        if kwargs["zero_stage"] > 1:  # each rank holds its shard of the EMA only
            assert results[rank]["local"] < 0.6 * single["full"], results
        else:
            assert results[rank]["local"] == single["full"]


def _bf16_worker(rank: int, world: int, run_dir: str, spec: dict) -> dict:
    """10 steps in bf16-mixed with EMA, a scheduler and logging every 2 steps; returns each step's loss and lr."""
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    x, y = _global_micro_batches(world, 1)[0]
    batches = [(x[rows], y[rows])] * STEPS  # one batch again and again: the loss must fall
    losses: list[float] = []

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        losses.append(loss.item())
        return loss

    model = _model()
    trainer = ds.Trainer(
        model, torch.optim.AdamW(model.parameters(), lr=1e-2), scheduler=_decaying, ema_decay=EMA_DECAY,
        loss_fn=loss_fn, max_steps=STEPS, max_epochs=None, strategy=spec, device="cpu", metrics=(),
        run_dir=Path(run_dir), tensorboard=False, progress="off", checkpoint_every_minutes=None,
        log_every_steps=2, precision="bf16-mixed",
    )  # fmt: skip
    trainer.fit(batches)
    dtypes = {str(p.dtype) for p in model.parameters()}
    raw = ModelState(trainer.strategy, model).state_dict()  # the trained weights (gathered: every rank calls it)
    gap = None
    if rank == 0:  # how far final/ (the EMA) is from them
        final = load_file(Path(run_dir) / "final" / "model.safetensors")
        gap = max((raw[n] - final[n]).abs().max().item() for n in final)
    return {"losses": losses, "lr": trainer.optimizer.param_groups[0]["lr"], "dtypes": sorted(dtypes), "gap": gap}


STAGES = {"zero1": {"zero_stage": 1}, "zero2": {"zero_stage": 2, "param_dtype": "bf16"},
          "zero3": {"zero_stage": 3, "param_dtype": "bf16", "reduce_dtype": "fp32"}}  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", list(STAGES))
def test_bf16_scheduler_ema_and_logging_under_each_stage(tmp_path, stage):
    import json

    world, run_dir = 2, tmp_path / "run"
    results = run_ranks(_bf16_worker, world, world, str(run_dir), {"name": "fsdp", **STAGES[stage]}, timeout_s=240)

    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "train/loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4, 6, 8, 10]  # written once (by rank 0), every 2 steps
    want_lrs = [1e-2 * 0.9**step for step in (2, 4, 6, 8, 10)]  # the scheduler stepped once per optimizer step
    assert [r["lr"] for r in train_lines] == pytest.approx(want_lrs)
    for rank in range(world):
        assert results[rank]["lr"] == pytest.approx(1e-2 * 0.9**STEPS)
        assert results[rank]["dtypes"] == ["torch.float32"]  # the sharded masters stay fp32 (bf16 only computes)
        losses = results[rank]["losses"]
        assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses)))
    first = sum(results[r]["losses"][0] for r in range(world)) / world
    last = sum(results[r]["losses"][-1] for r in range(world)) / world
    assert last < first - 0.1  # it trains
    assert all(t.dtype == torch.float32 for t in load_file(run_dir / "final" / "model.safetensors").values())
    assert results[0]["gap"] > 1e-4  # final/ holds the EMA, not the trained weights


class _ParallelBlocks(torch.nn.Module):
    """Two Linear(4, 4) blocks side by side, summed: FSDP2 shards each block's rows over the ranks, so a
    gradient that is non-finite in output column 0 only lands in the shard that holds row 0 (rank 0's)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 4) -> (B, 4)
        return sum(block(x) for block in self.blocks)


class _InfGradInColumn0(torch.autograd.Function):
    """Identity forward; backward makes the gradient of column 0 infinite (the loss stays finite)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:, 0] = float("inf")
        return grad


def _fp16_worker(rank: int, world: int, spec: dict, poisoned_step: int) -> list[dict]:
    """Twice 6 fp16-mixed steps: as they are, then with rank 1's gradient at ``poisoned_step`` infinite in
    one column (on rank 1 only)."""
    return [_fp16_run(rank, spec, poisoned) for poisoned in (None, poisoned_step)]


def _fp16_run(rank: int, spec: dict, poisoned_step: int | None) -> dict:
    torch.manual_seed(0)
    model = _ParallelBlocks()
    gen = torch.Generator().manual_seed(rank)
    batches = [(torch.randn(4, 4, generator=gen), torch.randn(4, 4, generator=gen)) for _ in range(6)]
    calls = [0]

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if rank == 1 and calls[0] == poisoned_step:
            out = _InfGradInColumn0.apply(out)
        return F.mse_loss(out.float(), target)

    trainer = ds.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=loss_fn, max_steps=6, max_epochs=None,
        strategy=spec, device="cpu", metrics=(), precision="fp16-mixed", progress="off",
    )  # fmt: skip
    trainer.fit(batches)
    weights = ModelState(trainer.strategy, model).state_dict()  # gathered on rank 0 (a collective)
    return {
        "skipped": trainer._step.skipped_steps,
        "scale": trainer.policy.scaler.get_scale(),
        "finite": all(bool(torch.isfinite(w).all()) for w in weights.values()),
    }


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_fp16_a_nonfinite_gradient_on_one_rank_skips_the_step_on_every_rank(stage):
    results = run_ranks(_fp16_worker, 2, 2, {"name": "fsdp", "zero_stage": stage}, 3, timeout_s=120)
    (clean0, poisoned0), (clean1, poisoned1) = results[0], results[1]
    assert clean0["skipped"] == clean1["skipped"]
    # Both ranks skipped the poisoned step (rank 0 holds the infinite shard, rank 1 made it) ...
    assert poisoned0["skipped"] == poisoned1["skipped"] == clean0["skipped"] + 1, results
    assert poisoned0["scale"] == poisoned1["scale"] == clean0["scale"] / 2  # ... and backed the scale off alike
    assert poisoned0["finite"], results


ONE_PROCESS = """
import sys
import torch, torch.distributed as dist
from safetensors.torch import load_file
sys.path.insert(0, {root!r})
from tests.train.test_fsdp_features import _train_with_ema
from tests.train.test_fsdp import _global_micro_batches
from pathlib import Path
run = Path({run!r})
_train_with_ema(run / "fsdp", _global_micro_batches(1, 1), {spec!r})
assert not dist.is_initialized(), "fit() left its one-rank group behind"
_train_with_ema(run / "single", _global_micro_batches(1, 1), "single_device")
ours, theirs = load_file(run / "fsdp/final/model.safetensors"), load_file(run / "single/final/model.safetensors")
for name in theirs:
    torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_fsdp_trains_on_one_process_without_a_launcher(tmp_path, stage):
    """No torchrun, no group: fit() makes a one-rank group of its own, trains like one device, and removes it;
    the process exits cleanly (a gloo group left to interpreter exit can abort it)."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    code = ONE_PROCESS.format(root=root, run=str(tmp_path), spec={"name": "fsdp", "zero_stage": stage})
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
