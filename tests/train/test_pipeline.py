"""The ``pipeline`` strategy on 2 gloo ranks equals one process on the same global batch.

Each case trains a tiny model in fp32 for 10 steps through ``ds.Trainer(strategy={"name": "pipeline", ...})``
on spawned gloo ranks (every rank of the pipeline is fed the same batches) and once in this process, with
gradient accumulation 2, clipping, a scheduler and EMA on: the loss of every step (the last stage's, and
the one rank 0 logs, which holds the first stage) and the final weights (each rank's stage, and ``final/``,
the whole model's EMA gathered to rank 0) agree to 1e-5 absolute; also after a resume from a checkpoint
(sharded or full), with batches of two shapes, and on 4 ranks as dp 2 x pp 2 (FSDP2 on the data dimension).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import deepseek as ds
from deepseek.models.language import Bert
from deepseek.models.vision import ViT
from deepseek.train.pipeline import Pipeline
from tests.gloo_ranks import run_ranks

STEPS, ACCUM, BATCH, SEQ, VOCAB = 10, 2, 4, 8, 64


def _model(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if family.startswith("gpt2"):
        return ds.models.build("gpt2", vocab_size=VOCAB, max_positions=SEQ, dim=16, depth=4, heads=2)
    if family == "vit":
        return ViT(image_size=8, patch=4, dim=16, depth=4, heads=2, num_classes=5, in_channels=3)
    return Bert(vocab_size=VOCAB, dim=16, depth=4, heads=2, hidden=32, max_positions=SEQ, num_classes=3, dropout=0.0)


def _batches(family: str, dp: int = 1, dp_index: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches of ``dp * BATCH`` samples, or data-parallel rank ``dp_index``'s slice of each."""
    if dp_index is not None:
        rows = slice(dp_index * BATCH, (dp_index + 1) * BATCH)
        return [(x[rows], y[rows]) for x, y in _batches(family, dp)]
    gen = torch.Generator().manual_seed(1)
    if family.startswith("gpt2"):
        ids = torch.randint(0, VOCAB, (STEPS * ACCUM, BATCH * dp, SEQ + 1), generator=gen)
        batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in ids]
        if family == "gpt2-ragged":  # every third batch shorter and of shorter sequences: other stage shapes
            batches = [(x[:2, :-2], y[:2, :-2]) if i % 3 == 2 else (x, y) for i, (x, y) in enumerate(batches)]
        return batches
    if family == "vit":
        return [(torch.randn(BATCH * dp, 3, 8, 8, generator=gen), torch.randint(0, 5, (BATCH * dp,), generator=gen))
                for _ in range(STEPS * ACCUM)]  # fmt: skip
    return [(torch.randint(0, VOCAB, (BATCH * dp, SEQ), generator=gen), torch.randint(0, 3, (BATCH * dp,), generator=gen))
            for _ in range(STEPS * ACCUM)]  # fmt: skip


def _loss_fn(losses: list[float]) -> Any:
    def loss_fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(outputs.flatten(0, -2) if outputs.dim() > 2 else outputs, targets.flatten())
        if torch.is_grad_enabled():  # training's losses, not validation's
            losses.append(loss.item())
        return loss

    return loss_fn


class _LoggedLoss:
    """The loss the Trainer logs for each step (rank 0's, which under pp 2 is the first stage's)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_step_end(self, trainer: Any) -> None:
        if trainer._losses:
            self.values.append(float(trainer._losses[-1]))


def _train(
    family: str, run_dir: Path, strategy: Any, stop_at: int | None = None, sharded: Any = "auto", dp: int = 1, dp_index: int | None = None
) -> dict[str, Any]:
    """Train STEPS steps (resuming once from the checkpoint of step ``stop_at`` when set, as a new process
    would: the second leg's model starts from other weights); validation every 5 steps."""
    losses: list[float] = []
    logged = _LoggedLoss()
    for leg, (max_steps, resume) in enumerate([(stop_at, None), (STEPS, "auto")] if stop_at else [(STEPS, None)]):
        model = _model(family, seed=leg)
        # eps 1e-4, not 1e-8 (see tests/models/test_parallelize_tp.py): attention's key biases have a zero true
        # gradient (softmax ignores a shift shared by all keys), only rounding noise (~1e-9 here, summed in another
        # order on each layout) that Adam would divide by its own size into lr-sized steps differing between runs.
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-4)
        trainer = ds.Trainer(
            model, optimizer, loss_fn=_loss_fn(losses), max_steps=max_steps, max_epochs=None,
            accumulate_grad_batches=ACCUM, grad_clip_norm=0.5,
            scheduler=lambda opt, total: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, STEPS), ema_decay=0.9,
            strategy=strategy, device="cpu", metrics=() if family.startswith("gpt2") else ("accuracy",), run_dir=run_dir,
            tensorboard=False, progress="off", checkpoint_every_steps=5, checkpoint_every_minutes=None,
            log_every_steps=1000, callbacks=[logged], val_every_steps=5, sharded_checkpoint=sharded,
        )  # fmt: skip
        data = _batches(family, dp, dp_index)
        trainer.fit(data, val_data=data[:2], resume=resume)
    full = {n: p.full_tensor() if hasattr(p, "full_tensor") else p for n, p in model.named_parameters()}  # FSDP2
    weights = {n: p.detach().flatten().tolist() for n, p in full.items()}
    val = dict(trainer.last_val_metrics)
    return {"losses": losses[-STEPS * ACCUM * _micro(strategy):], "logged": logged.values, "weights": weights, "val": val}


def _micro(strategy: Any) -> int:
    """Loss calls per batch: one per pipeline micro-batch."""
    return strategy.get("microbatches", strategy.get("pp", 1)) if isinstance(strategy, dict) else 1


def _rank_worker(rank: int, family: str, run_dir: str, spec: dict, stop_at: int | None = None, sharded: Any = "auto",
                 dp: int = 1) -> dict[str, Any]:  # fmt: skip
    return _train(family, Path(run_dir), spec, stop_at, sharded, dp, rank % dp)  # (pp, dp) ranks, row-major


def _per_step(losses: list[float]) -> torch.Tensor:
    """(STEPS,) mean of each step's equal-sized micro-batch losses."""
    return torch.tensor(losses, dtype=torch.float64).view(STEPS, -1).mean(1)


CASES = {  # name: (family, strategy kwargs)
    # GPipe runs with bert below (gpt2 with GPipe was checked too when built; one run per schedule keeps the suite short)
    "gpt2-1f1b": ("gpt2", {"schedule": "1f1b", "microbatches": 4, "split": [1, 3]}),
    "gpt2-interleaved": ("gpt2", {"schedule": "interleaved_1f1b", "microbatches": 2, "stages_per_rank": 2}),
    "gpt2-ragged-1f1b": ("gpt2-ragged", {"schedule": "1f1b"}),
    "vit-1f1b": ("vit", {"schedule": "1f1b"}),
    "bert-gpipe": ("bert", {"schedule": "gpipe"}),
}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_on_two_ranks_equals_one_process(tmp_path, case):
    family, kwargs = CASES[case]
    spec = {"name": "pipeline", "pp": 2, **kwargs}
    results = run_ranks(_rank_worker, 2, family, str(tmp_path / "ranks"), spec, timeout_s=240)
    single = _train(family, tmp_path / "one", "single_device")

    assert not results[0]["losses"]  # the loss lives on the last stage
    if family != "gpt2-ragged":  # equal micro-batches: each step's loss is the mean of its micro-batches'
        torch.testing.assert_close(_per_step(results[1]["losses"]), _per_step(single["losses"]), atol=1e-5, rtol=0)
    expected = torch.tensor(single["logged"], dtype=torch.float64)  # each step's loss, weighted by samples
    assert len(expected) == STEPS
    torch.testing.assert_close(torch.tensor(results[0]["logged"], dtype=torch.float64), expected, atol=1e-5, rtol=0)
    held = {**results[0]["weights"], **results[1]["weights"]}
    gpt2 = family.startswith("gpt2")
    assert set(held) == set(single["weights"]) | ({"head.weight"} if gpt2 else set())
    for name, value in held.items():  # gpt2's head on the last stage: the tied copy stayed equal to tok
        reference = single["weights"]["tok.weight" if gpt2 and name == "head.weight" else name]
        torch.testing.assert_close(torch.tensor(value), torch.tensor(reference), atol=1e-5, rtol=0, msg=name)
    _assert_same_final_weights(tmp_path / "ranks", tmp_path / "one")
    for rank in (0, 1):  # validation: the pipelined forward's outputs, shared by both ranks
        assert results[rank]["val"].keys() == single["val"].keys()
        for key, value in single["val"].items():
            assert abs(results[rank]["val"][key] - value) < 1e-5, (rank, key)


def _assert_same_final_weights(ours_dir: Path, theirs_dir: Path) -> None:
    ours, theirs = load_file(ours_dir / "final" / "model.safetensors"), load_file(theirs_dir / "final" / "model.safetensors")
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("sharded", [True, False])
def test_pipeline_checkpoints_resume_exactly_and_load_into_the_whole_model(tmp_path, sharded):
    """Stopped after step 5 and resumed (a fresh model, weights, optimizer, EMA and scheduler from the
    checkpoint): equal to one uninterrupted process; the sharded (DCP) checkpoint loads into a whole gpt2."""
    from deepseek.runs import load_sharded_weights

    spec = {"name": "pipeline", "pp": 2, "schedule": "1f1b"}
    results = run_ranks(_rank_worker, 2, "gpt2", str(tmp_path / "ranks"), spec, 5, sharded, timeout_s=240)
    single = _train("gpt2", tmp_path / "one", "single_device")
    torch.testing.assert_close(_per_step(results[1]["losses"]), _per_step(single["losses"]), atol=1e-5, rtol=0)
    _assert_same_final_weights(tmp_path / "ranks", tmp_path / "one")
    last = tmp_path / "ranks" / "checkpoints" / f"step-{STEPS:08d}"
    assert (last / "shards").is_dir() == sharded
    if sharded:  # the pp 2 layout's shards, read into the whole model in one process: the trained weights
        whole = _model("gpt2", seed=5)
        load_sharded_weights(whole, last)
        for name, p in whole.named_parameters():
            torch.testing.assert_close(p.detach().flatten(), torch.tensor(single["weights"][name]), atol=1e-5, rtol=0)


def test_pipeline_arguments_are_checked_when_built():
    assert Pipeline().microbatches == 2 and Pipeline(pp=4, dp_replicate=2).mesh_shape(16) == (4, 2, 2)
    with pytest.raises(ValueError, match=r"pipeline schedule: 'zb' is not allowed; use one of gpipe, 1f1b, interleaved_1f1b"):
        Pipeline(schedule="zb")
    with pytest.raises(ValueError, match=r"pipeline stages_per_rank: 1 is not allowed; interleaved_1f1b needs 2 or more"):
        Pipeline(schedule="interleaved_1f1b")
    with pytest.raises(ValueError, match=r"pipeline microbatches: 1 is not allowed; 1f1b needs at least pp = 2"):
        Pipeline(microbatches=1)
    with pytest.raises(ValueError, match=r"pipeline sequence_parallel: True is not allowed; pipeline parallelism runs"):
        Pipeline(tp=2, sequence_parallel=True)  # pp x tp: tests/train/test_pipeline_3d.py
    with pytest.raises(ValueError, match=r"pipeline zero_stage: 1 is not allowed; use 2 or 3"):
        Pipeline(zero_stage=1)
    with pytest.raises(ValueError, match=r"pipeline pp 2 x dp_replicate 1 x dp_shard 3 does not make the world size 4"):
        Pipeline(dp_shard=3).mesh_shape(4)


def test_a_custom_step_and_auxiliary_losses_are_refused():
    with pytest.raises(ValueError, match=r"a custom step_fn is not supported under pipeline parallelism"):
        Pipeline().check_step(lambda model, batch: None, torch.nn.Linear(1, 1))
    moe = torch.nn.Linear(1, 1)
    moe.aux_loss = None
    with pytest.raises(ValueError, match=r"pipeline does not support auxiliary losses"):
        Pipeline().check_step(None, moe)


@pytest.mark.slow
@pytest.mark.distributed
def test_pipeline_with_fsdp_on_the_data_dimension_equals_one_process(tmp_path):
    """dp 2 x pp 2 on 4 ranks: each stage sharded with FSDP2 over the 2 data-parallel ranks, each pipeline fed
    its half of every global batch, stopped after step 5 and resumed from its sharded checkpoint; one process
    trains on the whole global batches without a break."""
    spec = {"name": "pipeline", "pp": 2, "schedule": "1f1b", "dp_shard": 2}
    results = run_ranks(_rank_worker, 4, "gpt2", str(tmp_path / "ranks"), spec, 5, "auto", 2, timeout_s=300)
    assert (tmp_path / "ranks" / "checkpoints" / "step-00000005" / "shards" / ".metadata").is_file()
    single = _train("gpt2", tmp_path / "one", "single_device", dp=2)
    got = (_per_step(results[2]["losses"]) + _per_step(results[3]["losses"])) / 2  # the last stage's two halves
    torch.testing.assert_close(got, _per_step(single["losses"]), atol=1e-5, rtol=0)
    _assert_same_final_weights(tmp_path / "ranks", tmp_path / "one")
    for rank in range(4):  # validation over both pipelines' halves: the global batches' loss
        assert abs(results[rank]["val"]["val/loss"] - single["val"]["val/loss"]) < 1e-5, rank


def test_pipeline_in_a_plain_process_is_one_stage_equal_to_single_device(tmp_path):
    """No launcher: the strategy makes a one-rank group (removed at the end of fit) and runs pp 1, one stage."""
    import torch.distributed as dist

    spec = {"name": "pipeline", "pp": 1, "schedule": "gpipe", "microbatches": 2}
    ours, theirs = _train("gpt2", tmp_path / "pp1", spec), _train("gpt2", tmp_path / "one", "single_device")
    assert not dist.is_initialized()
    torch.testing.assert_close(torch.tensor(ours["logged"]), torch.tensor(theirs["logged"]), atol=1e-5, rtol=0)
    for name, value in theirs["weights"].items():
        torch.testing.assert_close(torch.tensor(ours["weights"][name]), torch.tensor(value), atol=1e-5, rtol=0)
    _assert_same_final_weights(tmp_path / "pp1", tmp_path / "one")
