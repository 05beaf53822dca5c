"""The ``expert_parallel`` strategy on gloo ranks equals one process on the same global batch.

A tiny moe_transformer in fp32 trains 10 steps through ``ds.Trainer(strategy={"name": "expert_parallel",
"ep": ...})`` on spawned gloo ranks (each rank gets its rows of every global micro-batch, rank 0 the first)
and once in this process on the whole global batch with the same micro-batching; the loss of every step
and the final weights (``final/``, every expert gathered to and written by rank 0) agree to 1e-5 absolute.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import deepseek as ds
from tests.gloo_ranks import run_ranks

STEPS, PER_RANK, SEQ, VOCAB, CLASSES, EXPERTS = 10, 2, 6, 32, 3, 4


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ds.models.build("moe_transformer", vocab_size=VOCAB, dim=8, depth=2, heads=2, num_experts=EXPERTS,
                           top_k=2, num_classes=CLASSES)  # fmt: skip


def _global_micro_batches(world: int, accum: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """STEPS * accum micro-batches of PER_RANK * world sequences: ids (B, SEQ), labels (B,)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (STEPS * accum, PER_RANK * world, SEQ), generator=gen)
    labels = torch.randint(0, CLASSES, (STEPS * accum, PER_RANK * world), generator=gen)
    return list(zip(ids, labels, strict=True))


def _train(run_dir: Path, batches: list, strategy, accum: int, clip: float | None, stop_at: int | None = None,
           ema: float | None = None, sharded: bool = False) -> tuple:  # fmt: skip
    """Train 10 steps (resuming once after ``stop_at`` steps when set; with an EMA of decay ``ema``, which
    ``final/`` then holds); returns every micro-batch's loss and the names of the expert parameters this rank holds."""
    losses: list[float] = []

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, targets)
        losses.append(loss.item())
        return loss

    legs = [(stop_at, None), (STEPS, "auto")] if stop_at else [(STEPS, None)]
    for leg, (max_steps, resume) in enumerate(legs):
        model = _model(seed=leg)  # as a new process would: the resumed leg's weights come from the checkpoint
        # eps 1e-4: the key biases get no gradient (softmax ignores a shift shared by all keys), only rounding
        # noise that differs with the summation order; Adam would divide it by its own size into lr-sized steps.
        trainer = ds.Trainer(
            model, torch.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-4), loss_fn=loss_fn, max_steps=max_steps,
            max_epochs=None, accumulate_grad_batches=accum, grad_clip_norm=clip, strategy=strategy, device="cpu",
            ema_decay=ema, metrics=(), run_dir=run_dir, tensorboard=False, progress="off", checkpoint_every_minutes=None,
            sharded_checkpoint=sharded,
        )  # fmt: skip
        trainer.fit(batches, resume=resume)
    experts = sorted({".".join(name.split(".")[:5]) for name, _ in model.named_parameters() if ".experts." in name})
    return losses, experts


def _rank_worker(rank: int, world: int, run_dir: str, spec: dict, accum: int, clip, stop_at, ema, sharded) -> tuple:
    rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    batches = [(x[rows], y[rows]) for x, y in _global_micro_batches(world, accum)]
    return _train(Path(run_dir), batches, spec, accum, clip, stop_at, ema, sharded)


def _per_step(losses: list[float], accum: int) -> torch.Tensor:
    """(STEPS,) mean micro-batch loss of each step (micro-batches are all the same size)."""
    return torch.tensor(losses[-STEPS * accum :], dtype=torch.float64).view(STEPS, accum).mean(1)


CASES = {  # name: (world, ep, accumulate_grad_batches, grad_clip_norm, resume after this step, EMA decay, sharded)
    "ep2-accum-clip-ema-resume": (2, 2, 2, 0.05, 5, 0.8, False),
    # checkpoint.sharded: each rank writes its own experts through DCP; resumed at ep 2, loaded at ep 1
    "ep2-sharded-ema-resume": (2, 2, 1, None, 5, 0.8, True),
    "ep2-x2-replicas-clip": (4, 2, 1, 0.05, None, None, False),  # two expert groups of 2 ranks, each holding every expert
}


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("case", list(CASES))
def test_expert_parallel_ranks_equal_one_process_on_the_global_batch(tmp_path, case):
    world, ep, accum, clip, stop_at, ema, sharded = CASES[case]
    spec = {"name": "expert_parallel", "ep": ep}
    run_dir = str(tmp_path / "ranks")
    results = run_ranks(_rank_worker, world, world, run_dir, spec, accum, clip, stop_at, ema, sharded, timeout_s=300)
    single, _ = _train(tmp_path / "one", _global_micro_batches(world, accum), "single_device", accum, clip, ema=ema)

    per_rank = EXPERTS // ep  # rank r holds experts r * per_rank ... of every block, under their own names
    for r in range(world):
        held = {name.rsplit(".", 1)[1] for name in results[r][1]}
        assert held == {str(e) for e in range((r % ep) * per_rank, (r % ep + 1) * per_rank)}, results[r][1]
    expected = _per_step(single, accum)
    got = torch.stack([_per_step(results[r][0], accum) for r in range(world)]).mean(0)  # equal shards: mean of means
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    ours = load_file(tmp_path / "ranks" / "final" / "model.safetensors")
    theirs = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)
    if stop_at:  # the first leg checkpointed through the strategy and the second resumed from it
        assert (tmp_path / "ranks" / "checkpoints" / f"step-{stop_at:08d}").is_dir()
    if sharded:  # every rank wrote its own experts; the checkpoint loads into the whole model (ep 1) unchanged
        from deepseek.runs import load_sharded_weights

        last = tmp_path / "ranks" / "checkpoints" / f"step-{STEPS:08d}"
        assert (last / "shards" / ".metadata").is_file()
        whole = _model(seed=7)
        load_sharded_weights(whole, last, part="ema" if ema else "model")
        for name, tensor in whole.state_dict().items():
            if name in ours:
                torch.testing.assert_close(tensor, ours[name], atol=1e-6, rtol=0, msg=name)


def test_expert_parallel_in_one_process_trains_the_whole_model(tmp_path):
    """A plain process (no launcher): a world of one, every expert on it, training as one device does."""
    batches = _global_micro_batches(1, 1)
    ours, experts = _train(tmp_path / "ep", batches, {"name": "expert_parallel", "ep": 2}, 1, None)
    theirs, _ = _train(tmp_path / "one", batches, "single_device", 1, None)
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert len(experts) == 2 * EXPERTS  # depth 2, all experts


def test_expert_parallel_arguments_are_checked_when_built():
    from deepseek.train.expert_parallel import ExpertParallelStrategy

    with pytest.raises(ValueError, match=r"train\.strategy: expert_parallel ep: 0 is not allowed; use an integer >= 1"):
        ExpertParallelStrategy(ep=0)
    with pytest.raises(ValueError, match=r"expert_parallel ep 3 does not divide the world size 4"):
        ExpertParallelStrategy(ep=3).mesh_shape(4)
    assert ExpertParallelStrategy(ep=2).mesh_shape(4) == (2, 2)
