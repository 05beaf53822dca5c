"""benchmarks/parallel_memory.py's measurement functions count what a rank holds (behaviour, not timing): each
storage once, shards as their local part, ZeroRedundancyOptimizer's share, and on one gloo rank the same
bytes ``deepseek plan`` predicts for DDP, ZeRO-1 and ZeRO-3 at world 1."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.gloo_ranks import run_ranks

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "parallel_memory.py"
TINY = argparse.Namespace(dim=32, depth=2, vocab=64, seq=8, batch=2, warmup=0, steps=1)


def _benchmark():
    if "parallel_memory" not in sys.modules:  # benchmarks/ is scripts, not a package
        spec = importlib.util.spec_from_file_location("parallel_memory", BENCHMARK)
        module = importlib.util.module_from_spec(spec)
        sys.modules["parallel_memory"] = module
        spec.loader.exec_module(module)
    return sys.modules["parallel_memory"]


def test_storage_bytes_counts_each_storage_once():
    bench = _benchmark()
    weight = torch.zeros(10, 4)
    tied = torch.nn.Linear(4, 10, bias=False)
    tied.weight = torch.nn.Parameter(weight)
    # a view and a tied twin share the weight's 160 bytes; the 3-element tensor adds 12; None adds nothing
    assert bench.storage_bytes([weight, weight[2:5], tied.weight, None, torch.ones(3)]) == 160 + 12
    freed = torch.zeros(8)
    freed.untyped_storage().resize_(0)  # how FSDP2 frees gathered parameters
    assert bench.storage_bytes([freed]) == 0


def _measure_worker(rank: int) -> dict:
    bench = _benchmark()
    return {stage: bench.rank_run(rank, 1, TINY, stage) for stage in (0, 1, 3)}


@pytest.mark.distributed
def test_one_rank_measures_what_the_plan_predicts():
    bench = _benchmark()
    measured = run_ranks(_measure_worker, 1, timeout_s=120)[0]
    parameters = len(bench._meta_params(TINY))
    for stage, m in measured.items():
        plan = bench.predicted(TINY, stage, 1)
        assert m["parameters"] == plan["parameters"] and m["gradients"] == plan["gradients"], (stage, m, plan)
        # AdamW's two states per element, plus a 0-dim fp32 `step` per parameter, which the plan leaves out
        assert m["optimizer_state"] == plan["optimizer_state"] + 4 * parameters, (stage, m, plan)
        assert m["peak_rss_growth"] > 0  # the cross-check saw the model arrive
    assert measured[0]["gathered"] == measured[1]["gathered"] == 0  # DDP and ZeRO-1 parameters are never gathered
    assert measured[3]["gathered"] > 0  # FSDP2 gathers whole blocks for forward and backward, even on one rank


TINY_TP = argparse.Namespace(dim=128, depth=2, vocab=64, seq=8, batch=2, warmup=0, steps=1)  # 2 heads: tp 2


def _tp_worker(rank: int) -> dict:
    return _benchmark().rank_run(rank, 2, TINY_TP, 3, tp=2)


@pytest.mark.distributed
@pytest.mark.slow  # two spawned ranks importing torch: ~30 s on this machine
def test_two_tensor_parallel_ranks_measure_what_the_plan_predicts():
    """tp 2 x dp_shard 1 (parallelize_gpt2, then fully_shard over a one-rank data dimension): each rank holds
    exactly the tp-local parameters and gradients the plan predicts, half the model's but the replicated ones."""
    bench = _benchmark()
    measured = run_ranks(_tp_worker, 2, timeout_s=180)
    plan = bench.predicted(TINY_TP, 3, 2, tp=2)
    whole = 4 * sum(p.numel() for p in bench._meta_params(TINY_TP))
    tensors = len(bench._meta_params(TINY_TP))  # AdamW's 0-dim `step` per parameter, left out by the plan
    for m in measured.values():
        assert m["parameters"] == plan["parameters"] and m["gradients"] == plan["gradients"], (m, plan)
        assert m["optimizer_state"] == plan["optimizer_state"] + 4 * tensors, (m, plan)
        assert whole / 2 < m["parameters"] < 0.6 * whole  # norms, positions and row-wise biases stay whole


TINY_PP = argparse.Namespace(dim=32, depth=2, vocab=64, seq=8, batch=2, warmup=0, steps=1)


def _pp_worker(rank: int) -> dict:
    return _benchmark().rank_run(rank, 2, TINY_PP, 2, pp=2)


@pytest.mark.distributed
@pytest.mark.slow  # two spawned ranks importing torch: ~30 s on this machine
def test_two_pipeline_ranks_measure_what_the_plan_predicts():
    """pp 2 (the pipeline strategy's own stages and 1F1B step): the rank holding the most (the first stage, with
    the token and position embeddings) holds exactly the parameters and gradients the plan predicts; the other
    stage holds its blocks, the final norm and its copy of the tied head."""
    bench = _benchmark()
    measured = run_ranks(_pp_worker, 2, timeout_s=180)
    plan = bench.predicted(TINY_PP, 2, 2, pp=2)
    top = max(measured.values(), key=lambda m: m["parameters"])
    assert top["parameters"] == plan["parameters"] and top["gradients"] == plan["gradients"], (top, plan)
    # AdamW's two states per element, plus a 0-dim fp32 `step` per parameter tensor, which the plan leaves out
    assert top["optimizer_state"] == plan["optimizer_state"] + 4 * top["parameter_tensors"], (top, plan)
    whole = 4 * sum(p.numel() for p in bench._meta_params(TINY_PP))
    assert all(m["parameters"] < 0.8 * whole for m in measured.values())  # each stage holds part of the model
    assert all(m["gathered"] == 0 for m in measured.values())  # one rank per stage: nothing is sharded
