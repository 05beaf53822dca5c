"""``parallel:`` on real gloo ranks (issue 15): the config alone selects FSDP with the resolved degrees and a
short run trains through it; degrees that do not fit the world stop every rank before its first step."""

from __future__ import annotations

import math

import pytest

from tests.gloo_ranks import run_ranks
from tests.train.test_plan import TINY_GPT2


def _rank_worker(rank: int, overrides: list[str]) -> dict:
    from deepseek.config import ConfigError, load_config
    from deepseek.train.build import build_run

    data = {k: dict(v) for k, v in TINY_GPT2.items()}
    data["train"].update(val_every_epochs=None, max_steps=2)
    cfg = load_config(None, [*overrides, "logging.tensorboard=false"], data=data)
    try:
        run = build_run(cfg, None, progress="off")
    except ConfigError as exc:
        return {"error": exc.problems}
    strategy = run.trainer.strategy_arg  # what assemble built from the config
    run.trainer.fit(run.train_loader, run.val_loader)
    weights = [float(p.detach().float().abs().sum()) for p in run.model.parameters()]
    return {"strategy": type(strategy).__name__, "zero_stage": getattr(strategy, "zero_stage", None),
            "dp_shard": getattr(strategy, "dp_shard", None), "steps": run.trainer.global_step,
            "finite": all(math.isfinite(w) for w in weights)}  # fmt: skip


@pytest.mark.distributed
@pytest.mark.slow
def test_parallel_section_selects_fsdp_on_two_ranks_and_trains():
    results = run_ranks(_rank_worker, 2, ["parallel.zero_stage=3"], timeout_s=180)
    for r in results.values():
        assert (r["strategy"], r["zero_stage"], r["dp_shard"]) == ("FSDP", 3, 2), r
        assert r["steps"] == 2 and r["finite"], r


@pytest.mark.distributed
@pytest.mark.slow  # spawning two ranks that import torch: ~20 s here
def test_degrees_that_do_not_fit_stop_every_rank_before_training():
    results = run_ranks(_rank_worker, 2, ["parallel.zero_stage=2", "parallel.dp_shard=4"], timeout_s=120)
    for r in results.values():
        (problem,) = r["error"]
        assert "parallel: dp_replicate x tp x pp = 1 x 1 x 1 x dp_shard 4 = 4, but the world has 2 ranks" in problem
