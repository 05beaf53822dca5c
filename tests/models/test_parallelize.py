"""gpt2's head-shardable attention and its tensor-parallel plan, without processes: weights saved with the
packed ``qkv`` Linear still load (same logits), Hugging Face's packed ``c_attn`` maps onto q, k and v, and a
tp degree that does not divide the heads or hidden sizes is refused before anything is sharded."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model, save_file

import deepseek as ds
from deepseek.models.parallelize import PLANS, parallelize_gpt2, plan_for

TINY = {"vocab_size": 64, "max_positions": 16, "dim": 32, "depth": 2, "heads": 4}


class PackedAttention(nn.Module):
    """gpt2's attention as it was saved before: one ``qkv`` Linear, rows q, k, v; ``(N, L, dim) -> (N, L, dim)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, past: None = None) -> tuple[torch.Tensor, None]:
        n, length, dim = x.shape
        q, k, v = (t.view(n, length, self.heads, -1).transpose(1, 2) for t in self.qkv(x).split(dim, dim=2))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim)), None


def old_packed_gpt2() -> nn.Module:
    """A gpt2 with the packed attention and random (non-zero) biases, so a wrong split would show."""
    torch.manual_seed(0)
    model = ds.models.build("gpt2", **TINY)
    for block in model.blocks:
        block.attn = PackedAttention(TINY["dim"], TINY["heads"])
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model.eval()


def test_an_old_packed_qkv_state_dict_loads_strictly_with_equal_logits():
    old = old_packed_gpt2()
    state = old.state_dict()
    assert "blocks.0.attn.qkv.weight" in state and "blocks.0.attn.q.weight" not in state
    model = ds.models.build("gpt2", **TINY).eval()
    model.load_state_dict(state)  # strict
    ids = torch.randint(0, TINY["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(ids), old(ids), rtol=0, atol=1e-6)
    cached, _ = model(ids, use_cache=True)  # the KV-cache path runs on the split weights too
    torch.testing.assert_close(cached, old(ids), rtol=0, atol=1e-6)


def test_an_old_packed_qkv_safetensors_file_loads_strictly(tmp_path):
    """Through ``safetensors.torch.load_model``, what ``deepseek.runs.load_weights`` uses for final/ weights."""
    old = old_packed_gpt2()
    save_file({k: v.contiguous() for k, v in old.state_dict().items() if k != "head.weight"}, tmp_path / "m.st")
    model = ds.models.build("gpt2", **TINY).eval()
    missing, unexpected = load_model(model, str(tmp_path / "m.st"), strict=True)
    assert not missing and not unexpected
    torch.testing.assert_close(model.blocks[1].attn.v.bias, old.blocks[1].attn.qkv.bias[2 * TINY["dim"] :])


def test_attention_has_separate_q_k_v_with_the_reference_initialisation():
    torch.manual_seed(0)
    model = ds.models.build("gpt2", vocab_size=64, max_positions=16, dim=128, depth=2, heads=4)
    attn = model.blocks[0].attn
    assert not hasattr(attn, "qkv")
    for proj in (attn.q, attn.k, attn.v):
        assert proj.weight.shape == (128, 128)
        assert abs(float(proj.weight.detach().std()) - 0.02) < 0.002
        assert float(proj.bias.detach().abs().max()) == 0.0


@pytest.fixture
def fake_group():
    """A process group of 3 fake ranks in this process (no communication), destroyed after the test."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=3)
    try:
        yield 3
    finally:
        dist.destroy_process_group()


def test_a_tp_degree_that_does_not_divide_the_heads_is_refused(fake_group):
    from torch.distributed.device_mesh import init_device_mesh

    model = ds.models.build("gpt2", **TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"parallel\.tp.*3.*heads 4.*dim 32.*mlp 128"):
        parallelize_gpt2(model, init_device_mesh("cpu", (fake_group,)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing sharded


def test_a_tp_degree_that_divides_the_heads_shards_each_rank_whole_heads(fake_group):
    from torch.distributed.device_mesh import init_device_mesh

    model = ds.models.build("gpt2", vocab_size=64, max_positions=16, dim=30, depth=1, heads=3)
    parallelize_gpt2(model, init_device_mesh("cpu", (fake_group,)))
    attn = model.blocks[0].attn
    for proj in (attn.q, attn.k, attn.v):  # one head of 10 features per rank, in each of q, k and v
        assert proj.weight.to_local().shape == (10, 30) and proj.bias.to_local().shape == (10,)
    assert attn.proj.weight.to_local().shape == (30, 10)
    assert model.head.weight is model.tok.weight  # still tied


def test_the_degree_check_names_key_value_and_sizes():
    from deepseek.models.parallelize.language import check_tp_degree

    model = ds.models.build("gpt2", vocab_size=64, max_positions=16, dim=36, depth=1, heads=6)
    check_tp_degree(model, 2)
    check_tp_degree(model, 6)
    for bad in (0, 4, 7):
        with pytest.raises(ValueError, match=rf"parallel\.tp={bad}\b.*heads 6"):
            check_tp_degree(model, bad)


def test_the_plan_registry_looks_up_gpt2_and_names_what_it_has():
    assert plan_for("gpt2") is parallelize_gpt2 and PLANS["gpt2"] is parallelize_gpt2
    with pytest.raises(ValueError, match=r"model.name='resnet18'.*gpt2"):
        plan_for("resnet18")


@pytest.mark.slow  # an ONNX export: seconds
def test_gpt2_with_separate_q_k_v_still_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from deepseek.export import export_onnx, verify_onnx

    model = ds.models.build("gpt2", **TINY).eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 8), generator=torch.Generator().manual_seed(2))
    assert verify_onnx(export_onnx(model, (ids,), tmp_path / "gpt2.onnx"), model, (ids,)) < 1e-5
