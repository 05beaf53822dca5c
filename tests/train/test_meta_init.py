"""Meta-device init under ``fsdp`` (``meta_init: true``): built on meta, sharded, then given the model's own init.

What the init equals (see ``deepseek.train.meta_init``): the model's own init operations replayed on each rank's
shards with a per-rank seed, i.e. the eager init's distribution per parameter, not its bitwise values.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import deepseek as ds
from deepseek.train.distributed import DistInfo
from deepseek.train.fsdp import FSDP
from deepseek.train.meta_init import build_on_meta
from tests.gloo_ranks import run_ranks

VOCAB, SEQ, DIM = 256, 8, 64


def _gpt2(dim: int = DIM, vocab: int = VOCAB, depth: int = 2) -> torch.nn.Module:
    return ds.models.build("gpt2", vocab_size=vocab, max_positions=SEQ, dim=dim, depth=depth, heads=2)


def _stats(state: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    return {name: (t.float().mean().item(), t.float().std().item()) for name, t in state.items()}


def _init_worker(rank: int) -> dict:
    """A meta-built gpt2 sharded on 2 ranks: its gathered weights' mean/std per parameter, and whether the
    two ranks' halves of each large weight differ."""
    torch.manual_seed(0)
    model = build_on_meta(_gpt2)
    assert all(p.is_meta for p in model.parameters())
    strategy = FSDP(zero_stage=3, meta_init=True)
    model = strategy.setup(model, DistInfo(rank, rank, 2, torch.device("cpu")), torch.device("cpu"))
    state = strategy.model_state_dict(model)  # a collective: the full weights on rank 0
    if rank != 0:
        return {}
    halves_differ = {n: not torch.equal(*t.chunk(2)) for n, t in state.items() if t.dim() == 2 and t.std() > 0}
    return {"stats": _stats(state), "halves_differ": halves_differ}


@pytest.mark.distributed
def test_meta_init_gives_each_shard_the_models_own_init_distribution():
    results = run_ranks(_init_worker, 2, timeout_s=120)
    torch.manual_seed(0)
    eager = _stats(_gpt2().state_dict())
    ours = results[0]["stats"]
    assert set(ours) == set(eager)
    for name, (mean, std) in eager.items():
        got_mean, got_std = ours[name]
        if std == 0:  # LayerNorm weights 1, biases 0: exactly the eager values
            assert (got_mean, got_std) == (mean, 0.0), name
        else:  # N(0, 0.02), and the residual projections' N(0, 0.02 / sqrt(2 * depth)): GPT-2's own init
            assert abs(got_mean - mean) < 0.2 * std and got_std == pytest.approx(std, rel=0.1), name
    assert all(results[0]["halves_differ"].values()), results[0]["halves_differ"]  # no two shards alike


def _hsdp_worker(rank: int) -> dict[str, Any]:
    """This rank's local shards of a meta-built gpt2 under HSDP (2 replicas x 2 shards), as numpy arrays (a
    tensor would cross to the parent in shared memory, which the worker's exit frees)."""
    torch.manual_seed(0)
    strategy = FSDP(zero_stage=3, dp_replicate=2, meta_init=True)
    model = strategy.setup(build_on_meta(_gpt2), DistInfo(rank, rank, 4, torch.device("cpu")), torch.device("cpu"))
    return {name: p.to_local().detach().numpy().copy() for name, p in model.named_parameters()}


@pytest.mark.slow
@pytest.mark.distributed
def test_under_hsdp_the_replicas_of_a_shard_start_equal_and_the_shards_differ():
    # mesh (dp_replicate, dp_shard) = ranks [[0, 1], [2, 3]]: ranks 0 and 2 hold shard 0, ranks 1 and 3 shard 1
    shards = run_ranks(_hsdp_worker, 4, timeout_s=180)
    for name, local in shards[0].items():
        assert (local == shards[2][name]).all() and (shards[1][name] == shards[3][name]).all(), name
        if local.ndim == 2:
            assert not (local == shards[1][name]).all(), name


def _train_worker(rank: int, run_dir: str, leg: str) -> list[float]:
    """Train (leg "eager": an eager model, 4 steps) or resume (leg "meta": a meta-built model, resuming at step 4
    and training to step 6); returns the losses."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, SEQ + 1), generator=gen)[rank : rank + 1]
    batch = (ids[:, :-1], ids[:, 1:])
    losses: list[float] = []

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        losses.append(loss.item())
        return loss

    torch.manual_seed(0)
    model = _gpt2() if leg == "eager" else build_on_meta(_gpt2)
    trainer = ds.Trainer(
        model, torch.optim.AdamW(model.parameters(), lr=1e-2), loss_fn=loss_fn, max_steps=4 if leg == "eager" else 6,
        max_epochs=None, strategy={"name": "fsdp", "zero_stage": 3, "meta_init": leg != "eager"}, device="cpu",
        metrics=(), run_dir=Path(run_dir) / leg, tensorboard=False, progress="off", checkpoint_every_minutes=None,
    )  # fmt: skip
    trainer.fit([batch] * 6, resume=Path(run_dir) / "eager" if leg == "meta" else None)
    return losses


@pytest.mark.slow
@pytest.mark.distributed
def test_meta_init_trains_and_a_checkpoint_loads_over_it(tmp_path):
    fresh = run_ranks(_train_worker, 2, str(tmp_path), "fresh", timeout_s=180)
    for losses in fresh.values():  # a meta-built model trains from its own init (no checkpoint)
        assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    run_ranks(_train_worker, 2, str(tmp_path), "eager", timeout_s=180)
    resumed = run_ranks(_train_worker, 2, str(tmp_path), "meta", timeout_s=180)
    assert all(len(losses) == 2 for losses in resumed.values())  # steps 5 and 6 only: it resumed at step 4
    # The meta-built model took the checkpoint's weights: the same loss as the eager model's would at step 5.
    eager_step4 = load_file(tmp_path / "eager" / "final" / "model.safetensors")
    model = _gpt2()
    model.load_state_dict(eager_step4, strict=False)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, SEQ + 1), generator=gen)
    with torch.no_grad():
        want = [F.cross_entropy(model(ids[r : r + 1, :-1]).flatten(0, 1), ids[r, 1:]).item() for r in (0, 1)]
    assert [resumed[r][0] for r in (0, 1)] == pytest.approx(want, abs=1e-5)


def _resident_bytes() -> int:
    """This process's resident set size now (Linux: /proc/self/statm, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def _memory_worker(rank: int, leg: str) -> dict:
    """Peak resident memory this fresh rank gains building a ~100 MB gpt2 (leg "meta": on meta, then sharded on 2
    ranks; leg "eager": whole, as a control that the measurement sees a whole model), after a warm-up that pays
    for the process group's and FSDP2's own buffers. Each leg in its own processes: memory one leg freed cannot
    hide the other's growth."""
    FSDP(zero_stage=3, meta_init=True).setup(build_on_meta(lambda: _gpt2(64, 512)), DistInfo(), torch.device("cpu"))
    before, resident = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, _resident_bytes()
    if leg == "meta":
        model = FSDP(zero_stage=3, meta_init=True).setup(build_on_meta(lambda: _gpt2(512, 50_000)), DistInfo(),
                                                         torch.device("cpu"))  # fmt: skip
        local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    else:
        model = _gpt2(512, 50_000)
        local = sum(p.numel() * p.element_size() for p in model.parameters())
    # meta: the PEAK this rank reached (what must stay below the model); eager: what it holds now (the control
    # must see the whole model, whatever peak the warm-up left behind)
    gained = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before if leg == "meta" else _resident_bytes() - resident
    full = sum(p.numel() * 4 for p in build_on_meta(lambda: _gpt2(512, 50_000)).parameters()) if leg == "meta" else local
    return {"gained": gained, "local": local, "full": full}


@pytest.mark.slow
@pytest.mark.distributed
def test_meta_init_peak_memory_per_rank_is_below_the_whole_model():
    meta = run_ranks(_memory_worker, 2, "meta", timeout_s=180)
    eager = run_ranks(_memory_worker, 2, "eager", timeout_s=180)
    for r, e in zip(meta.values(), eager.values()):
        assert r["local"] <= 0.51 * r["full"]  # this rank's shards: half the model
        assert r["gained"] < 0.75 * r["full"], r  # the peak it reached holding its shards: well below the model
        assert e["gained"] > 0.75 * e["full"], e  # building it whole shows as the whole model


class _HalvedInit(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
        with torch.no_grad():  # values computed from the (meta) parameter out of place: nothing to replay
            self.blocks[0].weight.copy_(self.blocks[0].weight * 0.5)


def test_meta_init_refuses_what_it_cannot_do(one_rank_group):
    with pytest.raises(ValueError, match=r"fsdp meta_init: True is not allowed; it needs zero_stage 2 or 3"):
        FSDP(zero_stage=1, meta_init=True)
    model = build_on_meta(_HalvedInit)
    with pytest.raises(ValueError, match=r"meta_init: blocks\.0\.weight's init copies values computed on the meta"):
        FSDP(zero_stage=3, meta_init=True).setup(model, one_rank_group, torch.device("cpu"))
