"""Constraints are checked before training: a violating candidate is rejected, counted, and never evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from deepseek.errors import ConfigError
from deepseek.search.nas.builders import build, model_spec
from deepseek.search.nas.constraints import ConstraintChecker, load_latency_table, table_latency
from deepseek.search.nas.run import run_search
from deepseek.search.nas.space import parse_space

REPO = Path(__file__).resolve().parents[3]
BASE = REPO / "configs" / "quickstart.yaml"  # digits: 8x8 images, 1 channel, 10 classes
DOC000 = {"search_space": [{"layer_type": ["Conv", "Transformer"], "channels": [64, 128, 256],
                            "activation": ["ReLU", "Swish"]}],
          "constraints": {"max_params": "10M", "target_device": "v100"},
          "optimizer": {"algorithm": "reinforce", "sample_size": 100}}  # fmt: skip


def space_with(constraints: dict, sample_size: int = 12, algorithm: str = "random"):
    return parse_space({"search_space": [{"layer_type": ["Conv", "Transformer"], "channels": [8, 64, 256],
                                          "depth": [1, 2]}],
                        "constraints": {"target_device": "cpu", **constraints},
                        "optimizer": {"algorithm": algorithm, "sample_size": sample_size, "seed": 0}})  # fmt: skip


def counting_evaluator(calls: list):
    def evaluate(candidate: dict, spec: dict) -> float:
        calls.append(candidate)
        return candidate["layers.0.channels"] / 256

    return evaluate


def test_v100_without_a_device_or_table_is_refused_in_one_line():
    if torch.cuda.is_available() and "v100" in torch.cuda.get_device_name(0).lower():
        pytest.skip("a V100 is here: its latency is measured")
    space = parse_space(DOC000)
    with pytest.raises(ConfigError) as err:
        ConstraintChecker(space.constraints, (1, 28, 28))
    message = str(err.value)
    assert "\n" not in message and message.startswith("constraints.target_device: 'v100' is not on this machine")
    assert "latency table" in message and "approximate_by_flops" in message


def test_meta_device_parameter_count_matches_the_real_model():
    space = parse_space(DOC000)
    cand = {"layers.0.layer_type": "Transformer", "layers.0.channels": 128, "layers.0.activation": "Swish"}
    spec = model_spec(space, cand, {}, (1, 28, 28), 10)
    meta = build(spec, "meta")
    assert all(p.device.type == "meta" for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in build(spec).parameters())


@pytest.mark.parametrize("limit,field", [({"max_params": "20k"}, "params"), ({"max_flops": "2M"}, "flops")])
def test_params_and_flops_limits_reject_without_evaluating(tmp_path, limit, field):
    calls: list = []
    fast = {"latency": "approximate_by_flops", "device_flops": "1T"}  # no timing: this test is about params/FLOPs
    summary = run_search(
        space_with({**limit, **fast}), BASE, tmp_path, evaluator=counting_evaluator(calls), log=lambda s: None
    )
    records = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    bound = float(next(iter(limit.values()))[:-1]) * {"k": 1e3, "M": 1e6}[next(iter(limit.values()))[-1]]
    rejected = [r for r in records if r["status"] == "rejected"]
    assert rejected and all(r[field] > bound and f"{field} " in r["reason"] for r in rejected)
    ok = [r for r in records if r["status"] == "ok"]
    assert ok and all(r[field] <= bound for r in ok)
    trained = [r["choices"] for r in ok if r["duplicate_of"] is None]
    assert calls == trained  # every rejected candidate was never evaluated, every accepted one once
    assert summary["rejected"] == len(rejected) and summary["sampled"] == 12


def test_latency_from_a_yaml_table_of_block_costs(tmp_path):
    table = {
        "base_ms": 0.5,
        "layers": [
            {"layer_type": "Conv", "ms": 1.0},
            {"layer_type": "Conv", "depth": 2, "ms": 2.0},
            {"layer_type": "Transformer", "ms": 5.0},
        ],
    }
    (tmp_path / "v100.yaml").write_text(yaml.safe_dump(table))
    space = space_with({"target_device": "v100", "max_latency_ms": 3})
    calls: list = []
    run_search(space, BASE, tmp_path / "out", evaluator=counting_evaluator(calls), latency_table=tmp_path / "v100.yaml",
               log=lambda s: None)  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "out" / "history.jsonl").read_text().splitlines()]
    for r in records:
        block = r["choices"]
        want = 0.5 + (5.0 if block["layers.0.layer_type"] == "Transformer" else 1.0 * block["layers.0.depth"])
        assert r["latency_ms"] == pytest.approx(want) and r["latency_source"] == "table"
        assert (r["status"] == "rejected") == (want > 3)
    assert {json.dumps(c) for c in calls} <= {json.dumps(r["choices"]) for r in records if r["status"] == "ok"}


def test_csv_table_of_whole_candidates(tmp_path):
    path = tmp_path / "lat.csv"
    path.write_text("layers.0.layer_type,layers.0.channels,ms\nConv,64,0.25\nTransformer,64,1.5\n")
    table = load_latency_table(path)
    assert table_latency(table, {"layers.0.layer_type": "Conv", "layers.0.channels": 64}, []) == 0.25
    assert table_latency(table, {"layers.0.layer_type": "Conv", "layers.0.channels": 8}, []) is None
    bad = tmp_path / "bad.csv"
    bad.write_text("layers.0.layer_type,ms\nConv,fast\n")
    with pytest.raises(ConfigError, match=r"candidates\[0\]\.ms: 'fast'; allowed: a number of milliseconds"):
        load_latency_table(bad)


def test_latency_approximated_by_flops_when_asked():
    space = parse_space(
        {
            **DOC000,
            "constraints": {
                "max_params": "10M",
                "target_device": "v100",
                "latency": "approximate_by_flops",
                "device_flops": "15.7T",
            },
        }
    )
    checker = ConstraintChecker(space.constraints, (1, 28, 28))
    cand = {"layers.0.layer_type": "Conv", "layers.0.channels": 64, "layers.0.activation": "ReLU"}
    m = checker.measure(model_spec(space, cand, {}, (1, 28, 28), 10), cand, space.block_list(cand))
    assert m.flops > 0 and m.latency_ms == pytest.approx(m.flops / 15.7e12 * 1e3)


def test_latency_measured_on_cpu(tmp_path):
    space = space_with({"max_latency_ms": 1e6})
    checker = ConstraintChecker(space.constraints, (1, 8, 8))
    cand = {"layers.0.layer_type": "Conv", "layers.0.channels": 8, "layers.0.depth": 1}
    m = checker.measure(model_spec(space, cand, {}, (1, 8, 8), 10), cand, space.block_list(cand))
    assert m.latency_source == "measured on cpu" and m.latency_ms > 0
