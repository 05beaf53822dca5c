"""bert_base, vit and the encoder-decoder transformer with q/k/v split for tensor parallelism (one process): the
split attention equals ``nn.MultiheadAttention`` on the same weights, files saved with the packed
``in_proj_weight`` (and from ``nn.Transformer``) still load to the same outputs, and each family's
``check(model, tp)`` refuses a ``parallel.tp`` that does not divide its sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from deepseek.models.blocks import MultiHeadAttention


def packed_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as saved while attention was ``nn.MultiheadAttention``: q/k/v packed into ``in_proj_*``."""
    out = dict(state)
    for key in [k for k in state if k.endswith("q_proj.weight") or k.endswith("q_proj.bias")]:
        prefix, kind = key.removesuffix("q_proj.weight").removesuffix("q_proj.bias"), key.rsplit(".", 1)[1]
        parts = [out.pop(f"{prefix}{p}.{kind}") for p in ("q_proj", "k_proj", "v_proj")]
        out[f"{prefix}in_proj_{kind}"] = torch.cat(parts)
    return out


def randomised(module: nn.Module) -> nn.Module:
    """Non-zero biases everywhere, so a q/k/v mix-up shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module.eval()


@pytest.mark.parametrize("case", ["self", "padding", "cross", "causal"])
def test_split_attention_equals_nn_multihead_attention(case):
    torch.manual_seed(0)
    reference = randomised(nn.MultiheadAttention(16, 4, batch_first=True))
    ours = MultiHeadAttention(16, 4).eval()
    ours.load_state_dict(reference.state_dict())  # the packed in_proj_weight / in_proj_bias split on load
    x, memory = torch.randn(3, 5, 16, requires_grad=True), torch.randn(3, 7, 16)
    pad = torch.zeros(3, 7 if case == "cross" else 5, dtype=torch.bool)
    pad[1, -2:], pad[2, -1] = True, True
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    kwargs = {"self": {}, "padding": {"key_padding_mask": pad}, "cross": {"key_padding_mask": pad},
              "causal": {"key_padding_mask": pad, "attn_mask": causal}}[case]  # fmt: skip
    kv = memory if case == "cross" else x
    expected = reference(x, kv, kv, need_weights=False, **kwargs)[0]
    got = ours(x, kv, kv, **kwargs)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), x)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(g_got, g_expected, rtol=0, atol=1e-5)
    if case == "causal":  # is_causal alone masks the same future keys
        torch.testing.assert_close(ours(x, key_padding_mask=pad, is_causal=True), got, rtol=0, atol=1e-6)


def test_the_split_projections_hold_whole_heads():
    attn = MultiHeadAttention(16, 4)
    assert [tuple(p.weight.shape) for p in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj)] == [(16, 16)] * 4
    assert "in_proj_weight" not in attn.state_dict()


BUILD = {
    "bert_base": ({"vocab_size": 40, "dim": 16, "depth": 2, "heads": 4, "dropout": 0.0}, lambda: torch.randint(1, 40, (2, 6))),
    "vit_tiny": ({"image_size": 8, "patch": 4, "num_classes": 3}, lambda: torch.randn(2, 3, 8, 8)),
    "transformer": (
        {"src_vocab": 30, "tgt_vocab": 20, "d_model": 16, "heads": 4, "encoder_layers": 2, "decoder_layers": 2,
         "ff": 32, "dropout": 0.0},
        lambda: (torch.tensor([[3, 4, 5, 0], [6, 7, 0, 0]]), torch.tensor([[1, 2, 3], [1, 4, 0]])),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BUILD))
def test_files_saved_with_packed_attention_load_to_the_same_outputs(name):
    kwargs, inputs = BUILD[name]
    torch.manual_seed(0)
    source = randomised(ds.models.build(name, **kwargs))
    old = packed_state(source.state_dict())
    assert any(k.endswith("attn.in_proj_weight") for k in old) and not any("q_proj" in k for k in old)
    model = ds.models.build(name, **kwargs).eval()
    model.load_state_dict(old)  # strict: every packed tensor lands in q_proj / k_proj / v_proj
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_the_transformer_equals_nn_transformer_on_its_weights():
    """A file saved from the nn.Transformer version (the same parameter names, q/k/v packed) loads and gives
    that model's logits, with padding in both inputs and the causal decoder."""
    torch.manual_seed(0)
    kwargs, inputs = BUILD["transformer"]
    model = ds.models.build("transformer", **kwargs).eval()
    core = randomised(nn.Transformer(16, 4, 2, 2, 32, 0.0, batch_first=True))
    model.core.load_state_dict(core.state_dict())
    src, tgt = inputs()
    expected = model.head(
        core(model.embed(model.src_embed, src), model.embed(model.tgt_embed, tgt),
             tgt_mask=torch.ones(3, 3, dtype=torch.bool).triu(1), tgt_is_causal=True,
             src_key_padding_mask=model.padding(src), tgt_key_padding_mask=model.padding(tgt),
             memory_key_padding_mask=model.padding(src))
    )  # fmt: skip
    model.train()  # the reference above may take nn.Transformer's fused eval path; ours is the same either way
    torch.testing.assert_close(model((src, tgt)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "name, kwargs, tp, match",
    [
        ("bert_base", {"vocab_size": 40, "dim": 16, "depth": 1, "heads": 4}, 3, r"parallel\.tp=3 .*heads 4, dim 16, mlp 64"),
        ("vit_tiny", {"image_size": 8, "patch": 4}, 2, r"parallel\.tp=2 .*heads 3, dim 192, mlp 768"),
        ("transformer", {"d_model": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff": 24}, 4,
         r"parallel\.tp=4 .*heads 2, d_model 16, ff 24"),
        ("bert_base", {"vocab_size": 40, "dim": 16, "depth": 1, "heads": 4}, 0, r"parallel\.tp=0 must be a positive"),
    ],
)  # fmt: skip
def test_check_refuses_a_tp_that_does_not_divide_the_sizes(name, kwargs, tp, match):
    from deepseek.models.parallelize import check_tp, plan_for_model

    model = ds.models.build(name, **kwargs)
    with pytest.raises(ValueError, match=match) as info:
        check_tp(model, tp)
    assert "\n" not in str(info.value)
    check_tp(model, 1)
    assert plan_for_model(model) is not None


@pytest.mark.parametrize("name", ["bert_base", "vit_tiny", "transformer", "transformer_seq2seq"])
def test_every_family_has_a_plan_by_name_and_by_class(name):
    from deepseek.models.parallelize import PLANS, name_of, plan_for

    model = ds.models.build(name, **BUILD[name.removesuffix("_seq2seq")][0])
    assert PLANS[name_of(model)] is plan_for(name.removesuffix("_seq2seq"))
    assert plan_for("vit_base_patch16") is plan_for("vit_tiny")  # one class, one plan


@pytest.fixture
def fake_tp_mesh():
    """A 2-rank tensor-parallel mesh on torch's fake process group (no communication: the plans' errors come
    before anything is sharded)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "name, kwargs, options, match",
    [
        ("transformer", BUILD["transformer"][0], {"sequence_parallel": True}, r"parallel\.sequence_parallel=True .*allowed: false"),
        ("bert_base", {**BUILD["bert_base"][0], "head": "none"}, {"loss_parallel": True}, r"parallel\.loss_parallel=True .*head='none'"),
        ("vit_tiny", {"image_size": 8, "patch": 4}, {}, r"parallel\.tp=2 .*heads 3"),
    ],
)  # fmt: skip
def test_plans_refuse_what_they_cannot_shard_before_sharding(fake_tp_mesh, name, kwargs, options, match):
    from torch.distributed.tensor import DTensor

    from deepseek.models.parallelize import plan_for

    model = ds.models.build(name, **kwargs)
    with pytest.raises(ValueError, match=match) as info:
        plan_for(name)(model, fake_tp_mesh, **options)
    assert "\n" not in str(info.value)
    assert not any(isinstance(p, DTensor) for p in model.parameters())  # nothing was sharded


def test_vit_sequence_parallel_needs_the_tokens_to_divide(fake_tp_mesh):
    from deepseek.models.parallelize import plan_for
    from deepseek.models.vision import ViT

    model = ViT(image_size=8, patch=4, dim=16, depth=1, heads=4, num_classes=3)  # 4 patches + class token: 5
    with pytest.raises(ValueError, match=r"parallel\.sequence_parallel=True .*5 tokens .*parallel\.tp=2"):
        plan_for("vit_tiny")(model, fake_tp_mesh, sequence_parallel=True)


@pytest.fixture
def one_rank_tp_mesh(tmp_path):
    """A real 1-rank gloo mesh (the plans run forward and backward on it)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("tp",))
    finally:
        dist.destroy_process_group()


GPT2 = ({"vocab_size": 40, "max_positions": 16, "dim": 16, "depth": 2, "heads": 4}, lambda: torch.randint(0, 40, (2, 8)))


@pytest.mark.parametrize("name, sequence_parallel", [("gpt2", False), ("gpt2", True), ("vit_tiny", False),
                                                     ("bert_base", False), ("transformer", False)])  # fmt: skip
def test_every_parameter_is_a_dtensor_after_a_plan_so_foreach_optimizers_step(one_rank_tp_mesh, name, sequence_parallel):
    """The parts a plan does not shard (LayerNorms, position embeddings) are replicated DTensors on the tp mesh,
    not plain tensors: a foreach optimizer (AdamW's default on CUDA) refuses a mix of both ('got mixed
    torch.Tensor and DTensor', seen on an H200), and the step still equals the unsharded model's."""
    from torch.distributed.tensor import DTensor

    from deepseek.models.parallelize import plan_for

    kwargs, make_input = GPT2 if name == "gpt2" else BUILD[name]
    torch.manual_seed(0)
    x = make_input()
    plain = ds.models.build(name, **kwargs)
    sharded = ds.models.build(name, **kwargs)
    sharded.load_state_dict(plain.state_dict())
    plan_for(name)(sharded, one_rank_tp_mesh, sequence_parallel=sequence_parallel)
    assert [n for n, p in sharded.named_parameters() if not isinstance(p, DTensor)] == []
    for model in (plain, sharded):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
        out = model(x)
        out = out.full_tensor() if isinstance(out, DTensor) else out
        out.float().square().mean().backward()
        opt.step()
    for (key, p), q in zip(plain.named_parameters(), sharded.parameters()):
        torch.testing.assert_close(q.full_tensor(), p.detach(), rtol=1e-5, atol=1e-6, msg=key)
