"""The parallel plan (issue 15): degrees against the world size, the strategy they select, per-rank memory and
communication computed from the meta model, and FSDP2 shards under the fake process group that match it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepseek.config import ConfigError, load_config
from deepseek.config.schema import ParallelSection
from deepseek.train.distributed import DistInfo
from deepseek.train.plan import (
    collectives,
    local_numel,
    make_plan,
    optimizer_states_per_element,
    parallel_of,
    resolve_degrees,
    strategy_spec,
)
from deepseek.train.plan_inputs import activation_bytes, estimate_activations, meta_model, sample_batch
from deepseek.train.plan_shard import check_sharding

TINY_GPT2 = {
    "model": {"name": "gpt2", "vocab_size": 259, "max_positions": 32, "dim": 32, "depth": 2, "heads": 2},
    "data": {"name": "chatterbot_lm", "seq_len": 16, "stride": 16, "batch_size": 4},
    "train": {"max_steps": 2, "loss": "token_cross_entropy", "metrics": ["token_accuracy"]},
}


def tiny(*overrides: str):
    return load_config(None, overrides, data={k: dict(v) for k, v in TINY_GPT2.items()})


@pytest.mark.parametrize(
    "par, world, expected",
    [
        ({}, 1, (1, 1)),
        ({}, 1024, (1, 1024)),
        ({"dp_replicate": 4}, 1024, (4, 256)),
        ({"dp_replicate": 2, "dp_shard": 4}, 8, (2, 4)),
        ({"dp_shard": 8}, 8, (1, 8)),
    ],
)
def test_degrees_multiply_to_the_world(par, world, expected):
    deg = resolve_degrees(ParallelSection(**par), world)
    assert (deg.dp_replicate, deg.dp_shard) == expected and deg.world == world and deg.dp == world


@pytest.mark.parametrize(
    "par, world, expected",
    [
        ({"dp_replicate": 3}, 8, "parallel: dp_replicate x tp x pp = 3 x 1 x 1 = 3 does not divide the world size 8"),
        ({"dp_shard": 4}, 8, "x dp_shard 4 = 4, but the world has 8 ranks; allowed: degrees that multiply to 8"),
        ({"dp_replicate": 2, "dp_shard": 4}, 1024, "= 8, but the world has 1024 ranks"),
        ({}, 0, "world size: 0; allowed: a positive number of ranks"),
    ],
)
def test_degrees_that_do_not_fit_are_one_line(par, world, expected):
    with pytest.raises(ConfigError) as info:
        resolve_degrees(ParallelSection(**par), world)
    (problem,) = info.value.problems
    assert expected in problem and "\n" not in problem


def test_reshard_after_forward_defaults_by_stage():
    assert resolve_degrees(ParallelSection(zero_stage=3), 2).reshard_after_forward is True
    assert resolve_degrees(ParallelSection(zero_stage=2), 2).reshard_after_forward is False
    assert resolve_degrees(ParallelSection(zero_stage=2, reshard_after_forward=False), 2).reshard_after_forward is False


def test_parallel_selects_the_strategy():
    assert strategy_spec(tiny(), 4).name == "auto"  # no section: train.strategy as it is
    assert strategy_spec(tiny("parallel.zero_stage=0"), 4).name == "auto"  # plain DDP on several ranks
    assert strategy_spec(tiny("parallel.zero_stage=3"), 1).name == "auto"  # one process: the model as it is
    spec = strategy_spec(tiny("parallel.zero_stage=2", "parallel.dp_replicate=2"), 8)
    assert spec == {"name": "fsdp", "zero_stage": 2, "dp_replicate": 2, "dp_shard": 4,
                    "reshard_after_forward": None, "cpu_offload": False}  # fmt: skip  (null: fsdp decides by stage)
    with pytest.raises(ConfigError, match="but the world has 6 ranks"):
        strategy_spec(tiny("parallel.zero_stage=3", "parallel.dp_shard=4"), 6)
    with pytest.raises(ConfigError, match="train.strategy: fsdp: .*contradicts zero_stage: 3"):
        parallel_of(tiny("train.strategy.name=fsdp", "train.strategy.reshard_after_forward=false"))
    # without a parallel section, fsdp's own arguments are what the plan uses
    assert parallel_of(tiny("train.strategy.name=fsdp", "train.strategy.dp_replicate=2")).dp_replicate == 2


def test_meta_init_selects_fsdp_also_on_one_process():
    # A model built on the meta device has no memory until fsdp gives it its shards: one process uses fsdp too.
    spec = strategy_spec(tiny("parallel.zero_stage=3", "parallel.meta_init=true"), 1)
    assert spec["name"] == "fsdp" and spec["meta_init"] is True
    with pytest.raises(ConfigError, match="parallel: meta_init: true needs zero_stage 2 or 3"):
        tiny("parallel.zero_stage=1", "parallel.meta_init=true")


@pytest.mark.slow
def test_deepseek_train_builds_on_meta_from_the_parallel_section(tmp_path):
    """`deepseek train` in a plain process (no launcher) with parallel.meta_init: built on meta, sharded on a
    one-rank group, trained, and final/ written whole."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    sizes = [f"{k}={v}" for k, v in {"model.dim": 32, "model.depth": 2, "model.heads": 2, "model.max_positions": 16,
                                      "data.seq_len": 16, "data.stride": 16, "data.batch_size": 4}.items()]  # fmt: skip
    cmd = [sys.executable, "-m", "deepseek", "train", "configs/gpt2_chatterbot.yaml", *sizes, "train.max_steps=3",
           "scheduler.warmup_steps=1", "train.max_epochs=null", "parallel.zero_stage=3", "parallel.meta_init=true",
           "--run-dir", str(tmp_path / "run"), "--progress", "off"]  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["strategy"] == {"name": "fsdp", "zero_stage": 3, "meta_init": True}
    embedding = final.get("tok.weight", final.get("head.weight"))  # tied: stored once
    assert embedding is not None and embedding.shape == (259, 32) and all(t.isfinite().all() for t in final.values())


def test_a_run_whose_degrees_do_not_fit_its_world_stops_before_training(tmp_path):
    from deepseek.train.assemble import _strategy

    with pytest.raises(ConfigError, match="parallel: .* but the world has 1 ranks"):
        _strategy(tiny("parallel.dp_shard=2"), DistInfo())


@pytest.mark.parametrize("optim, states", [("adamw", 2), ("sgd", 1), ({"name": "sgd", "momentum": 0.0}, 0)])
def test_optimizer_states_come_from_the_optimizer(optim, states):
    cfg = load_config(None, data={**TINY_GPT2, "optim": optim})
    assert optimizer_states_per_element(cfg) == (states, 4)


def test_zero3_per_rank_state_is_about_one_nth_of_ddp():
    cfg3, cfg0 = tiny("parallel.zero_stage=3"), tiny("parallel.zero_stage=0")
    model = meta_model(cfg3)
    for world in (2, 4, 16):  # at 64 ranks a dim-32 model's rows are fewer than the shards: padding dominates
        ddp, z3 = make_plan(cfg0, model, world, "cpu", None), make_plan(cfg3, model, world, "cpu", None)
        state = [sum(p.memory[k] for k in ("parameters", "gradients", "optimizer_state")) for p in (ddp, z3)]
        assert state[0] == 4 * 4 * ddp.parameter_count  # fp32 params + grads + AdamW's two states
        assert abs(state[1] / (state[0] / world) - 1) < 0.10 if world <= 4 else state[1] < state[0] / world * 1.5
    z1 = make_plan(tiny("parallel.zero_stage=1"), model, 4, "cpu", None).memory
    z2 = make_plan(tiny("parallel.zero_stage=2"), model, 4, "cpu", None).memory
    assert z1["parameters"] == z1["gradients"] > z2["parameters"] == z2["gradients"]
    assert z2["optimizer_state"] < z1["optimizer_state"] <= 1.15 * z2["optimizer_state"]  # ZeRO-1: whole parameters
    assert z1["optimizer_state"] < ddp.memory["optimizer_state"]


def test_zero2_holds_shards_and_gathers_the_whole_model_for_the_step():
    # Measured by benchmarks/parallel_memory.py: after a step a ZeRO-2 rank holds parameter shards, as ZeRO-3
    # does; the whole parameters are gathered on top of them from forward to backward (FSDP2 keeps both).
    cfg2, cfg3 = tiny("parallel.zero_stage=2", "model.depth=4"), tiny("parallel.zero_stage=3", "model.depth=4")
    model = meta_model(cfg2)
    full = sum(p.numel() * p.element_size() for p in model.parameters())
    z2, z3 = make_plan(cfg2, model, 4, "cpu", None).memory, make_plan(cfg3, model, 4, "cpu", None).memory
    assert z2["parameters"] == z3["parameters"] < full / 3
    assert z2["gathered"] == full > z3["gathered"]


def test_collective_bytes_by_strategy():
    p = 1000
    deg = resolve_degrees(ParallelSection(zero_stage=0), 4)
    assert collectives(deg, p) == {"all_reduce (gradients)": 1500}
    deg3 = resolve_degrees(ParallelSection(zero_stage=3), 4)
    assert collectives(deg3, p, micro_batches=2) == {"all_gather (parameters)": 3000, "reduce_scatter (gradients)": 750}
    hsdp = collectives(resolve_degrees(ParallelSection(zero_stage=2, dp_replicate=2), 4), p)
    assert hsdp == {"all_gather (parameters)": 500, "reduce_scatter (gradients)": 500,
                    "all_reduce (across replicas)": 500}  # fmt: skip
    z1 = collectives(resolve_degrees(ParallelSection(zero_stage=1), 4), p)
    assert z1 == {"all_reduce (gradients)": 1500, "broadcast (parameters)": 750}
    assert collectives(resolve_degrees(ParallelSection(), 1), p) == {}


def test_a_plan_that_does_not_fit_says_so():
    big = ("model.dim=4096", "model.depth=16", "model.heads=32")  # ~3.2e9 parameters, on the meta device
    cfg = tiny("parallel.zero_stage=0", *big)
    plan = make_plan(cfg, meta_model(cfg), 8, "v100-32gb", None)
    assert plan.device_total > 32 * 2**30 * 0.9 and not plan.fits and plan.to_dict()["fits"] is False
    sharded = make_plan(tiny("parallel.zero_stage=3", *big), meta_model(cfg), 8, "v100-32gb", None)
    assert sharded.fits


@pytest.mark.parametrize("world, rank, replicate", [(1024, 0, 1), (1024, 1023, 1), (1024, 517, 8), (6, 5, 1)])
def test_fully_shard_under_the_fake_group_matches_the_plan(world, rank, replicate):
    """1,024 ranks in one process: every DTensor's local shard has the plan's number of elements."""
    cfg = tiny("parallel.zero_stage=3", f"parallel.dp_replicate={replicate}")
    deg = resolve_degrees(cfg.parallel, world)
    check = check_sharding(meta_model(cfg), deg, rank)
    assert check.ok, check.mismatches
    model = meta_model(cfg)
    assert check.local_elements == sum(local_numel(p, deg.dp_shard, rank % deg.dp_shard) for p in model.parameters())
    assert not torch.distributed.is_initialized()


def test_the_shard_check_catches_a_wrong_plan(monkeypatch):
    import deepseek.train.plan_shard as plan_shard

    monkeypatch.setattr(plan_shard, "local_numel", lambda p, shards, rank: p.numel())  # "unsharded" planned
    deg = resolve_degrees(ParallelSection(zero_stage=3), 16)
    assert not check_sharding(meta_model(tiny()), deg, 0).ok


def test_activation_estimate_on_meta_is_close_to_the_real_forward():
    """Within 10% of what the same forward saves on CPU (kernels differ a little: CPU attention saves its own)."""
    cfg = tiny()
    meta = estimate_activations(cfg, meta_model(cfg))
    real_model = meta_model(cfg).to_empty(device="cpu")
    real_inputs = torch.zeros(sample_batch(cfg).shape, dtype=torch.long)
    assert meta == pytest.approx(activation_bytes(real_model, real_inputs), rel=0.10) and meta > 0
    doubled = estimate_activations(tiny("data.batch_size=8"), meta_model(cfg))
    assert doubled == pytest.approx(2 * meta, rel=0.05)  # activations grow with the batch


@pytest.mark.parametrize(
    "overrides, world",
    [(["parallel.zero_stage=1"], 4), (["parallel.zero_stage=2", "parallel.dp_replicate=2"], 4),
     (["parallel.zero_stage=3", "parallel.cpu_offload=true"], 8), (["parallel.zero_stage=3", "train.strategy=fsdp"], 2)],
)  # fmt: skip
def test_the_spec_builds_the_fsdp_strategy(overrides, world):
    """What ``parallel`` selects is what the ``fsdp`` strategy accepts (built only: set-up needs the ranks)."""
    from deepseek.train.strategy import build_strategy

    cfg = tiny(*overrides)
    built = build_strategy(strategy_spec(cfg, world), DistInfo(world_size=world))
    deg = resolve_degrees(cfg.parallel, world)
    assert type(built).__name__ == "FSDP"
    assert (built.zero_stage, built.dp_replicate, built.dp_shard) == (deg.zero_stage, deg.dp_replicate, deg.dp_shard)


def test_zero1_optimizer_share_is_zero_redundancy_optimizers_largest():
    # Measured by benchmarks/parallel_memory.py: ZeroRedundancyOptimizer gives each rank whole parameters (largest
    # first, to the least-loaded rank), so the rank with the embedding holds more than 1/N of AdamW's state.
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from deepseek.runs import build_model

    cfg = tiny("parallel.zero_stage=1", "model.vocab_size=2048")
    plan = make_plan(cfg, meta_model(cfg), 4, "cpu", None)
    params = list(build_model(cfg).parameters())
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    try:
        zero = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=1e-3)
        shares = [sum(p.numel() for g in groups for p in g["params"]) for groups in zero._partition_parameters()]
    finally:
        dist.destroy_process_group()
    assert len(shares) == 4 and max(shares) > 1.5 * sum(shares) / 4  # the embedding alone outweighs a quarter
    assert plan.memory["optimizer_state"] == 2 * 4 * max(shares)  # AdamW: two fp32 states per element
