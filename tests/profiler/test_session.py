"""The profiler's outputs on a small transformer: the trace parses, both flame graphs are self-contained and not
empty, summary.json has every documented key with its type, the step split and module times are read from the
profile, FLOPs agree with the analytic count, and CUDA-only metrics say "needs CUDA" on a CPU."""

from __future__ import annotations

import json
import re

import pytest
import torch

from deepseek.profiler import SCHEMA, SCHEMA_ID, profile_model, schema_problems
from deepseek.profiler.metrics import METRICS, NEEDS_CUDA, collect
from deepseek.profiler.summary import SPLIT

TOLERANCE = 0.10  # FLOPs: dispatcher vs analytic, as tests/profiler/test_flops.py states for the transformers


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert")
    summary = profile_model(
        "bert_base",
        batch_size=2,
        output_dir=out,
        steps=2,
        warmup=1,
        seq_len=16,
        device="cpu",
        metrics=list(METRICS),
        overrides={"dim": 32, "depth": 2, "heads": 4, "vocab_size": 100},
    )
    return out, summary


def test_trace_parses_and_flame_graphs_are_self_contained_and_not_empty(bert):
    out, summary = bert
    trace = json.loads((out / summary["files"]["trace"]).read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"ds::forward", "ds::backward", "ds::optimizer", "module::blocks.0.attn"} <= names
    for key in ("flamegraph_stack", "flamegraph_module"):
        svg = (out / summary["files"][key]).read_text()
        assert svg.lstrip().startswith(("<svg", "<?xml")) and "</svg>" in svg
        assert not re.search(r"(src|href)=\"https?://", svg)  # opens offline: no CDN, no external file
        assert svg.count("<rect") > 10
    module_lines = (out / summary["files"]["stacks_module"]).read_text().splitlines()
    assert any(line.startswith("backward;blocks.0;blocks.0.attn;") for line in module_lines)
    assert len((out / summary["files"]["stacks"]).read_text().splitlines()) > 10


def test_summary_json_has_every_documented_key_with_its_type(bert):
    out, _ = bert
    summary = json.loads((out / "summary.json").read_text())
    assert schema_problems(summary) == []
    assert set(SCHEMA) <= set(summary) and summary["schema"] == SCHEMA_ID
    assert summary["model"] == "bert_base" and summary["mode"] == "train" and summary["steps"] == 2
    broken = {**summary, "mfu": "high", "extra": 1}
    del broken["split_s"]
    assert sorted(schema_problems(broken)) == [".extra: not in the schema", ".mfu: 'high' is not number|null",
                                               ".split_s: missing"]  # fmt: skip


def test_split_modules_and_operators_come_from_the_profile(bert):
    _, s = bert
    assert set(s["split_s"]) == set(SPLIT)
    assert s["split_s"]["forward"] > 0 and s["split_s"]["backward"] > 0 and s["split_s"]["optimizer"] > 0
    assert sum(s["split_share"].values()) == pytest.approx(1.0, abs=0.02)  # the phases tile the step
    st = s["step_time_s"]
    assert st["min"] <= st["mean"] <= st["max"]
    modules = {m["name"]: m for m in s["modules"]}
    block, attn = modules["blocks.0"], modules["blocks.0.attn"]
    assert block["forward_s"] >= attn["forward_s"] > 0  # inclusive of submodules
    assert block["backward_s"] >= attn["backward_s"] > 0  # backward attributed through autograd sequence numbers
    assert attn["flops"] > 0 and block["flops"] >= attn["flops"]
    ops = {o["name"]: o for o in s["operators"]}
    assert ops["aten::addmm"]["calls"] > 0 and ops["aten::addmm"]["flops"] > 0
    assert s["memory"]["peak_bytes"] > 0 and s["bottlenecks"]
    assert all(b["advice"] and 0 <= b["share"] <= 1 for b in s["bottlenecks"])


def test_flops_are_within_the_tolerance_of_the_analytic_count_and_give_mfu(bert):
    _, s = bert
    f = s["flops"]
    assert f["per_step"] == f["dispatcher"] == f["module_sum"]
    assert abs(f["dispatcher"] - f["analytic"]) <= TOLERANCE * f["analytic"] and f["analytic_formula"]
    assert s["achieved_flops_per_s"] == pytest.approx(f["per_step"] / s["step_time_s"]["mean"])
    if s["peak"]["flops_per_s"]:
        assert s["mfu"] == pytest.approx(s["achieved_flops_per_s"] / s["peak"]["flops_per_s"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU behaviour")
def test_cuda_only_metrics_say_needs_cuda_on_a_cpu(bert):
    _, s = bert
    assert {k: v for k, v in s["metrics"].items() if METRICS[k].cuda_only} == {
        "gpu_util": NEEDS_CUDA,
        "nvtx_range": NEEDS_CUDA,
        "kernel_launch": NEEDS_CUDA,
    }
    assert 0 < s["metrics"]["cpu_util"]


def test_metrics_on_cuda_come_from_kernel_events():
    kernels = {"count_per_step": 40.0, "busy_s_per_step": 0.005, "launches_per_step": 40.0, "launch_us_mean": 4.0}
    got = collect(["gpu_util", "kernel_launch", "nvtx_range"], device=torch.device("cuda"), kernels=kernels,
                  step_time_s=0.01, cpu_s=0.0, wall_s=0.0, nvtx_ranges=12)  # fmt: skip
    assert got["gpu_util"]["busy_share"] == pytest.approx(0.5)
    assert got["kernel_launch"] == {"count_per_step": 40.0, "launches_per_step": 40.0, "launch_us_mean": 4.0}
    assert got["nvtx_range"] == {"ranges_pushed": 12}


def test_time_with_a_collective_in_flight_is_communication_taken_out_of_its_phase(tmp_path):
    """A one-rank gloo group: the all-reduce of the gradients runs on gloo's worker thread inside backward."""
    import torch.distributed as dist

    from deepseek.profiler.analysis import analyze
    from deepseek.profiler.session import StepPhases, make_profiler

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model, got = torch.nn.Linear(256, 256), {}
        phases = StepPhases()
        with make_profiler(torch.device("cpu"), wait=0, warmup=0, active=2,
                           on_ready=lambda p: got.update(events=list(p.events()))) as prof:  # fmt: skip
            for _ in range(2):
                phases.enter("forward")
                loss = model(torch.randn(64, 256)).square().mean()
                phases.enter("backward")
                loss.backward()
                for p in model.parameters():
                    dist.all_reduce(p.grad)
                phases.enter("optimizer")
                model.zero_grad()
                phases.close()
                prof.step()
    finally:
        dist.destroy_process_group()
    profile = analyze(got["events"])
    assert profile.steps == 2 and profile.split_s["communication"] > 0
    assert sum(profile.split_s.values()) == pytest.approx(sum(profile.step_times_s) / 2, rel=0.02)


def test_a_vision_transformers_analytic_count_uses_the_patches_attention_sees(tmp_path):
    s = profile_model("vit_tiny", batch_size=2, output_dir=tmp_path, steps=1, warmup=0, mode="infer", device="cpu")
    f = s["flops"]
    assert "* 5 * " in f["analytic_formula"]  # seq_len: 4 patches of a 32x32 image and the class token
    assert abs(f["dispatcher"] - f["analytic"]) <= TOLERANCE * f["analytic"]
