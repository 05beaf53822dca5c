"""The plan for tensor, pipeline and expert parallelism (issue 16): the strategy the degrees select, the
model-dependent checks, and the per-dimension memory, communication and bubble, hand-computed for a tiny gpt2;
a 1,024-rank 3-D plan of a large gpt2 on the meta device."""

from __future__ import annotations

import pytest

from deepseek.config import ConfigError, load_config
from deepseek.train.plan import check_model_degrees, resolve_degrees, strategy_spec
from deepseek.train.plan_inputs import meta_model

TINY_GPT2 = {
    "model": {"name": "gpt2", "vocab_size": 259, "max_positions": 32, "dim": 32, "depth": 4, "heads": 2},
    "data": {"name": "chatterbot_lm", "seq_len": 16, "stride": 16, "batch_size": 4},
    "train": {"max_steps": 2, "loss": "token_cross_entropy", "metrics": ["token_accuracy"]},
}
MOE = {
    "model": {"name": "moe_transformer", "vocab_size": 64, "dim": 16, "depth": 2, "heads": 2, "num_experts": 4,
              "num_classes": 3},  # fmt: skip
    "data": {"name": "chatterbot_lm", "seq_len": 16, "stride": 16, "batch_size": 4},
    "train": {"max_steps": 2},
}


def tiny(*overrides: str, base: dict = TINY_GPT2):
    return load_config(None, overrides, data={k: dict(v) for k, v in base.items()})


def test_tp_selects_fsdp_with_tensor_parallel_arguments():
    cfg = tiny("parallel.zero_stage=3", "parallel.tp=2", "parallel.sequence_parallel=true")
    assert strategy_spec(cfg, 8) == {"name": "fsdp", "zero_stage": 3, "dp_replicate": 1, "dp_shard": 4,
                                     "reshard_after_forward": None, "cpu_offload": False, "tp": 2,
                                     "sequence_parallel": True, "loss_parallel": False}  # fmt: skip
    assert strategy_spec(cfg, 2)["name"] == "fsdp"  # tp 2 on two ranks: fsdp over a dp_shard of 1


def test_pp_selects_the_pipeline_strategy():
    cfg = tiny("parallel.zero_stage=2", "parallel.pp=2", "parallel.tp=2", "parallel.pp_microbatches=4")
    assert strategy_spec(cfg, 8) == {"name": "pipeline", "pp": 2, "schedule": "1f1b", "microbatches": 4,
                                     "stages_per_rank": 1, "split": None, "tp": 2, "dp_replicate": 1,
                                     "dp_shard": 2, "zero_stage": 2, "reshard_after_forward": None,
                                     "sequence_parallel": False}  # fmt: skip
    assert strategy_spec(tiny("parallel.zero_stage=3", "parallel.pp=2"), 2)["microbatches"] == 2  # null: pp


def test_ep_selects_expert_parallel_and_divides_the_data_parallel_degree():
    assert strategy_spec(tiny("parallel.ep=2", base=MOE), 4) == {"name": "expert_parallel", "ep": 2}
    with pytest.raises(ConfigError, match=r"parallel: ep: 4 does not divide the data-parallel degree 6"):
        resolve_degrees(tiny("parallel.ep=4", base=MOE).parallel, 6)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["parallel.tp=3"], "parallel.tp=3 must be a positive integer dividing gpt2's heads 2, dim 32"),
        (["parallel.pp=8", "data.batch_size=8"], "parallel: pp x pp_stages_per_rank = 8 x 1 = 8 stages, but the model has 4 blocks; "
                            "allowed: at most 4"),  # fmt: skip
        (["parallel.pp=3", "data.batch_size=3"], "parallel: pp x pp_stages_per_rank = 3 x 1 = 3 stages do not divide the model's 4 "
                            "blocks; allowed: a divisor of 4, or parallel.pp_split"),  # fmt: skip
        (["parallel.pp=2", "parallel.pp_split=[1,2]"], "parallel: pp_split: [1, 2] sums to 3, but the model has "
                                                       "4 blocks"),  # fmt: skip
        (["parallel.pp=2", "parallel.pp_microbatches=3"], "parallel: pp_microbatches: 3 does not divide "
                                                          "data.batch_size 4"),  # fmt: skip
    ],
)
def test_degrees_the_model_cannot_take_are_one_line(overrides, expected):
    cfg = tiny("parallel.zero_stage=3", *overrides)
    with pytest.raises(ConfigError) as info:
        check_model_degrees(cfg, meta_model(cfg))
    (problem,) = info.value.problems
    assert expected in problem and "\n" not in problem, problem


def test_degrees_the_model_takes_pass():
    for overrides in (["parallel.tp=2"], ["parallel.pp=2"], ["parallel.pp=3", "parallel.pp_split=[2,1,1]", "data.batch_size=6"],
                      ["parallel.pp=2", "parallel.pp_schedule=interleaved_1f1b", "parallel.pp_stages_per_rank=2"]):  # fmt: skip
        cfg = tiny("parallel.zero_stage=3", *overrides)
        check_model_degrees(cfg, meta_model(cfg))
    moe = tiny("parallel.ep=4", base=MOE)
    check_model_degrees(moe, meta_model(moe))
    with pytest.raises(ConfigError, match=r"parallel: ep: 3 does not divide the model's 4 experts"):
        moe3 = tiny("parallel.ep=3", base=MOE)
        check_model_degrees(moe3, meta_model(moe3))


def test_tp_pp_numbers_equal_the_hand_computed_ones():
    """tiny gpt2 (vocab 259, 32 positions, dim 32, 4 blocks, 2 heads; fp32), tp 2 x pp 2 x dp_shard 2, 1F1B."""
    from deepseek.train.plan import make_plan
    from deepseek.train.plan_dims import pipeline_blocks
    from deepseek.train.plan_inputs import boundary_shape, estimate_activations, sample_batch

    cfg = tiny("parallel.zero_stage=3", "parallel.tp=2", "parallel.pp=2")
    model = meta_model(cfg)
    boundary = boundary_shape(model, pipeline_blocks(model), sample_batch(cfg))
    assert boundary == ((4, 16, 32), 4)  # (batch, seq, dim) fp32: 8,192 bytes
    activations = estimate_activations(cfg, model)
    plan = make_plan(cfg, model, 8, "cpu", activations, boundary)
    # a block, tp-local: ln1 + ln2 64 + 64; q, k, v column-wise 16 x 32 + 16 each; proj row-wise 32 x 16 + 32;
    # mlp.0 64 x 32 + 64; mlp.2 32 x 64 + 32 -> 6,448 elements. Stage 0: 2 blocks + tok 130 x 32 + pos 32 x 32;
    # stage 1: 2 blocks + ln_f 64 + the tied head's copy 130 x 32.
    block = 128 + 3 * (512 + 16) + (512 + 32) + (2048 + 64) + (2048 + 32)
    assert block == 6448
    pp = plan.dimensions["pp"]
    assert pp["stage_parameters"] == [4 * (2 * block + 130 * 32 + 32 * 32), 4 * (2 * block + 64 + 130 * 32)]
    assert pp["pp_rank"] == 0 and pp["blocks"] == 2 and pp["in_flight"] == 2 and pp["microbatches"] == 2
    assert pp["boundary_bytes"] == 8192 // 2 and pp["bubble"] == pytest.approx(1 / 3)
    assert pp["collectives"] == {"pp send (activations)": 2 * 4096, "pp send (gradients)": 0}  # the first stage
    # ZeRO-3 over dp_shard 2 of the tp-local shapes (dim 0 halved): a block 64 + 3 x (8 x 32 + 8) + (16 x 16 + 16)
    # + (32 x 32 + 32) + (16 x 64 + 16) = 3,224; tok 65 x 32, pos 16 x 32
    assert plan.memory["parameters"] == plan.memory["gradients"] == 4 * (2 * 3224 + 65 * 32 + 16 * 32)
    assert plan.memory["optimizer_state"] == 2 * plan.memory["parameters"]  # AdamW: exp_avg, exp_avg_sq
    tp = plan.dimensions["tp"]
    ratio = (10 + (24 + 5 * 2 * 16 / 32) / 2) / (34 + 5 * 2 * 16 / 32)  # Korthikanti et al.: a 2, L 16, d 32
    assert tp["activation_ratio"] == pytest.approx(ratio)
    assert plan.memory["activations"] == round(round(activations * 2 / 4 * 2 / 2) * ratio)  # 2 of 4 blocks
    # 2 blocks x (2 forward + 2 backward) all-reduces of 8,192 bytes, ring 2 (T-1)/T
    assert tp["collectives"] == {"tp all_reduce (activations)": 2 * 4 * 2 * (1 / 2) * 8192}
    # dp on the rank's 72,320 tp-local bytes: reduce-scatter (N-1)/N of them; ZeRO-3 (reshard after forward)
    # all-gathers them in forward and backward of each of the 2 micro-batches
    assert plan.dimensions["dp"]["parameters"] == 72320
    assert plan.collectives["reduce_scatter (gradients)"] == 36160
    assert plan.collectives["all_gather (parameters)"] == 2 * 2 * 36160
    assert plan.strategy == "pipeline" and plan.dimensions["dp"]["degree"] == 2


@pytest.mark.parametrize(
    "schedule, stages, micro, pp, expected",
    [("gpipe", 1, 8, 4, 3 / 11), ("1f1b", 1, 4, 4, 3 / 7), ("interleaved_1f1b", 2, 8, 4, 3 / 11 / 2)],
)
def test_bubble_by_schedule(schedule, stages, micro, pp, expected):
    from deepseek.train.plan_dims import bubble, in_flight

    assert bubble(pp, micro, schedule, stages) == pytest.approx(expected)
    assert in_flight(schedule, micro, pp) == (micro if schedule == "gpipe" else min(micro, pp))


def test_sequence_parallel_splits_every_activation_and_traffic_by_kind():
    from deepseek.train.plan_dims import tp_activation_ratio, tp_collectives

    assert tp_activation_ratio(4, True, 32, 2048, 4096) == 1 / 4
    # 6 blocks x 4 all-gathers (and 4 reduce-scatters) of (T-1)/T x 1,000 bytes: the all-reduces' bytes, split
    assert tp_collectives(4, True, 6, 1000, 1) == {"tp all_gather (activations)": 6 * 4 * 750,
                                                   "tp reduce_scatter (activations)": 6 * 4 * 750}  # fmt: skip
    assert tp_collectives(4, False, 6, 1000, 1) == {"tp all_reduce (activations)": 6 * 4 * 2 * 750}
    assert tp_collectives(1, False, 6, 1000, 1) == {}


@pytest.mark.slow  # a few seconds: the fast lane keeps to its budget
def test_a_1024_rank_3d_plan_of_a_large_gpt2_prints_each_dimension(capsys):
    """configs/gpt2_3d_1024.yaml (9.7B parameters, tp 8 x pp 8 x dp_shard 16): meta device, no process group."""
    from deepseek.cli.main import main
    from tests.conftest import REPO

    assert main(["plan", str(REPO / "configs" / "gpt2_3d_1024.yaml"), "--world", "1024", "--device",
                 "h100-80gb"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "plan: 1024 ranks = dp_replicate 1 x dp_shard 16 x tp 8 x pp 8; strategy pipeline" in out
    for section in ("tensor parallel (tp 8, sequence parallel)", "pipeline (pp 8, 1f1b, 8 micro-batches",
                    "data parallel (dp 16)", "tp all_gather (activations)", "pp send (activations)", "bubble",
                    "46.7%", "reduce_scatter (gradients)", "fits h100-80gb"):  # fmt: skip
        assert section in out, section
    assert main(["plan", str(REPO / "configs" / "gpt2_3d_1024.yaml"), "--world", "1024", "--json"]) == 0
    import json

    plan = json.loads(capsys.readouterr().out)
    assert set(plan["dimensions"]) == {"tp", "pp", "dp"} and len(plan["dimensions"]["pp"]["stage_parameters"]) == 8
    assert plan["parameter_count"] == 9_675_689_984


def test_interleaved_and_uneven_splits_place_the_blocks_by_stage():
    from deepseek.train.plan_dims import local_params, pipeline_blocks, pp_rank_params

    model = meta_model(tiny())
    blocks = pipeline_blocks(model)
    params = local_params(model, blocks, 1)
    # interleaved, pp 2 x 2 stages: pp rank 0 holds stages 0 and 2 (blocks 0, 2), rank 1 stages 1 and 3
    held = pp_rank_params(model, params, blocks, 2, 2, None)
    assert [sorted({p.block for p in mine if p.block is not None}) for mine in held] == [[0, 2], [1, 3]]
    assert {p.name for p in held[0] if p.block is None} == {"tok.weight", "pos.weight"}
    assert {p.name for p in held[1] if p.block is None} == {"ln_f.weight", "ln_f.bias", "head.weight"}
    held = pp_rank_params(model, params, blocks, 2, 1, [3, 1])
    assert [sorted({p.block for p in mine if p.block is not None}) for mine in held] == [[0, 1, 2], [3]]
    # one stage: every parameter once (the tied head is the token embedding)
    (whole,) = pp_rank_params(model, params, blocks, 1, 1, None)
    assert sum(p.numel for p in whole) == sum(p.numel() for p in model.parameters())


# Tiny models of the families with a tensor-parallel plan; odd vocabularies and classes make rank 0's shard of a
# cut dim the larger one (DTensor's ceil).
TP_FAMILIES = {
    "bert_mlm": ("bert_base", {"vocab_size": 41, "dim": 16, "depth": 2, "heads": 4, "head": "mlm", "dropout": 0.0}),
    "bert_cls": ("bert_base", {"vocab_size": 41, "dim": 16, "depth": 2, "heads": 4, "num_classes": 3}),
    "vit": ("vit", {"image_size": 8, "patch": 4, "dim": 16, "depth": 2, "heads": 4, "num_classes": 5}),
    "transformer": ("transformer", {"src_vocab": 31, "tgt_vocab": 21, "d_model": 16, "heads": 4, "encoder_layers": 2,
                                    "decoder_layers": 1, "ff": 40, "dropout": 0.0}),
}  # fmt: skip


def _family_model(name: str, kwargs: dict):
    import deepseek as ds
    from deepseek.models.vision import ViT

    return ViT(**kwargs) if name == "vit" else ds.models.build(name, **kwargs)  # vit_tiny's 3 heads refuse tp 2


@pytest.mark.parametrize("family", sorted(TP_FAMILIES))
def test_tp_plan_of_each_family_holds_what_its_tensor_parallel_plan_leaves_on_a_rank(family):
    """The plan's tp 2 per-rank parameters (the model's own layout in plan_dims.TP_LAYOUTS) equal, exactly, what
    the family's plan in deepseek.models.parallelize leaves on rank 0 of a 2-rank fake process group."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from deepseek.models.parallelize import plan_for_model
    from deepseek.train.plan import make_plan

    name, kwargs = TP_FAMILIES[family]
    with torch.device("meta"):
        meta = _family_model(name, kwargs)
    cfg = tiny("parallel.zero_stage=3", "parallel.tp=2")  # the parallel section; the model is the family's
    planned = make_plan(cfg, meta, 2, "cpu", None).dimensions["tp"]["parameters"]
    model = _family_model(name, kwargs)
    whole = sum(p.numel() for p in model.parameters())
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        plan_for_model(model)(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)))
        held = sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in model.parameters())
    finally:
        dist.destroy_process_group()
    assert held < 0.9 * whole  # the plan sharded a good part of the model (the test is not vacuous)
    assert planned == 4 * held, (family, planned // 4, held, whole)
