"""FLOP counting on the dispatcher: exact per-Linear counts, attention counted once (fused SDPA on CPU included),
correct per-module attribution in backward, and the three-way reconciliation on small gpt2 and bert_base."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import deepseek as ds
from deepseek.profiler.flops import analytic_transformer_flops, count_flops, reconcile

# The dispatcher count of the small transformers below is within this fraction of the analytic 6N/2N + attention
# count (measured: gpt2 -1.7% infer / -1.0% train, bert -6.8% / -5.6%); the differences are asserted item by item.
TOLERANCE = 0.10


def test_mlp_counts_two_flops_per_weight_per_row_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 7))
    x = torch.randn(5, 12)
    with torch.no_grad():
        infer = count_flops(model, lambda: model(x))
    assert infer.by_module["0"] == 2 * 12 * 20 * 5 and infer.by_module["2"] == 2 * 20 * 7 * 5
    assert infer.by_module["1"] == 0 and infer.total == infer.by_module[""] == 2 * 5 * (12 * 20 + 20 * 7)
    train = count_flops(model, lambda: model(x).sum().backward())
    # backward: weight gradient for both, input gradient only for the second (x needs no gradient)
    assert train.by_module["0"] == 2 * (2 * 12 * 20 * 5) and train.by_module["2"] == 3 * (2 * 20 * 7 * 5)
    assert sum(train.by_operator.values()) == train.total == train.by_module[""]


class TinyAttention(nn.Module):
    """Self-attention ``(N, L, dim) -> (N, L, dim)`` with fused SDPA or explicit matmul + softmax."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = heads, fused
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = (p(x).view(n, length, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = torch.ones(length, length, dtype=torch.bool).triu(1)
            scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(mask, float("-inf"))
            out = scores.softmax(-1) @ v
        return out.transpose(1, 2).reshape(n, length, dim)


def test_fused_sdpa_counts_attention_once_like_explicit_matmuls():
    x = torch.randn(2, 16, 32, requires_grad=True)
    counts = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = TinyAttention(32, 4, fused)
        with torch.no_grad():
            counts[fused, "infer"] = count_flops(model, lambda m=model: m(x))
        counts[fused, "train"] = count_flops(model, lambda m=model: m(x).sum().backward())
    fused_ops = counts[True, "infer"].by_operator
    assert "aten._scaled_dot_product_flash_attention_for_cpu" in fused_ops  # the CPU kernel ran and was counted
    scores = 2 * 2 * 16 * 16 * 32  # one (L x head_dim) @ (head_dim x L) product over batch and heads
    assert counts[True, "infer"].total == counts[False, "infer"].total == 3 * 2 * 32 * 32 * 32 + 2 * scores
    # torch's fused backward formula recomputes QK^T: one product more than the explicit graph's backward
    assert counts[True, "train"].total == counts[False, "train"].total + scores
    assert counts[False, "train"].total - counts[False, "infer"].total == 2 * counts[False, "infer"].total


def test_backward_flops_go_to_the_module_that_ran_the_forward():
    # q, k, v read the same input: torch's ModuleTracker credits their backward 1x/2x/3x; ours 1x each
    torch.manual_seed(0)
    model = TinyAttention(32, 4, fused=True)
    x = torch.randn(2, 16, 32, requires_grad=True)
    count = count_flops(model, lambda: model(x).sum().backward())
    projection = 3 * 2 * 32 * 32 * 32  # forward, input gradient, weight gradient
    assert count.by_module["q"] == count.by_module["k"] == count.by_module["v"] == projection
    assert count.self_by_module[""] == count.total - 3 * projection  # the attention itself, forward and backward


def test_analytic_formula_and_its_string():
    flops, formula = analytic_transformer_flops(params_non_embedding=1000, layers=2, d_model=8, seq_len=4, tokens=10,
                                                mode="train")  # fmt: skip
    assert flops == 3 * (2 * 1000 + 4 * 2 * 4 * 8) * 10 and formula.endswith(f"= {flops:,}")
    causal, _ = analytic_transformer_flops(params_non_embedding=1000, layers=2, d_model=8, seq_len=4, tokens=10,
                                           mode="infer", causal=True)  # fmt: skip
    assert causal == (2 * 1000 + 4 * 2 * 4 * 8 // 2) * 10
    with pytest.raises(ValueError, match="mode='eval'"):
        analytic_transformer_flops(params_non_embedding=1, layers=1, d_model=1, seq_len=1, tokens=1, mode="eval")


def _run(model: nn.Module, batch, mode: str):
    if mode == "train":
        model.train()
        return count_flops(model, lambda: model(batch).float().sum().backward())
    model.eval()
    with torch.no_grad():
        return count_flops(model, lambda: model(batch))


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_gpt2_three_way_reconciliation(mode):
    torch.manual_seed(0)
    dim, depth, vocab, batch, seq = 64, 2, 32, 2, 16
    model = ds.models.build("gpt2", vocab_size=vocab, max_positions=seq, dim=dim, depth=depth, heads=4)
    count = _run(model, torch.randint(0, vocab, (batch, seq)), mode)
    r = reconcile(model, count, seq_len=seq, tokens=batch * seq, mode=mode)
    k, tokens = (3 if mode == "train" else 1), batch * seq
    assert r["module_sum"] == r["dispatcher"] == count.total
    assert abs(r["dispatcher"] - r["analytic"]) <= TOLERANCE * r["analytic"]
    biases = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None)
    norms = sum(p.numel() for m in model.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters())
    fused_recompute = 2 * batch * seq * seq * dim * depth if mode == "train" else 0  # QK^T again in backward
    assert r["breakdown"] == {
        "outside the model": 0,
        "attention": fused_recompute,
        "bias adds": -2 * biases * tokens * k,
        "Linears off 2*weights*tokens": 0,
        "LayerNorm parameters": -2 * norms * tokens * k,
    }
    # N counts the LM head's weight (tied to the token embedding) and no other embedding
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("tok.", "pos.")))
    assert r["analytic"] == k * (2 * (non_embedding + vocab * dim) + 4 * depth * seq * dim) * tokens
    assert r["unexplained"] == 0 and any("tied to the embedding 'tok'" in n for n in r["notes"])


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_bert_three_way_reconciliation(mode):
    torch.manual_seed(0)
    dim, batch, seq = 32, 2, 16
    model = ds.models.build("bert_base", vocab_size=64, dim=dim, depth=2, heads=2, dropout=0.0)
    count = _run(model, torch.randint(0, 64, (batch, seq)), mode)
    r = reconcile(model, count, seq_len=seq, tokens=batch * seq, mode=mode)
    k, tokens = (3 if mode == "train" else 1), batch * seq
    assert r["module_sum"] == r["dispatcher"] and abs(r["dispatcher"] - r["analytic"]) <= TOLERANCE * r["analytic"]
    # pooler and classifier see one token per sequence, not every token
    assert r["breakdown"]["Linears off 2*weights*tokens"] == -2 * k * (dim * dim + dim * 2) * (tokens - batch)
    assert r["unexplained"] == 0 and any("pooler" in n for n in r["notes"])


def test_non_transformer_has_no_analytic_count():
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        count = count_flops(model, lambda: model(torch.randn(3, 4)))
    r = reconcile(model, count, seq_len=1, tokens=3, mode="infer")
    assert r["analytic"] is None and r["dispatcher"] == r["module_sum"] == 2 * 4 * 4 * 3


def test_gradient_checkpointing_recompute_is_counted_on_the_blocks():
    torch.manual_seed(0)
    model = ds.models.build("gpt2", vocab_size=32, max_positions=16, dim=64, depth=2, heads=4)
    ids = torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        forward = count_flops(model, lambda: model(ids))
    plain = count_flops(model, lambda: model(ids).sum().backward())
    model.gradient_checkpointing_enable()
    checkpointed = count_flops(model, lambda: model(ids).sum().backward())
    extra = checkpointed.total - plain.total  # the blocks' forward again, up to what backward needs (torch stops early)
    assert 0 < extra <= forward.by_module["blocks"]
    assert checkpointed.by_module["blocks"] - plain.by_module["blocks"] == extra  # all of it on the blocks
    assert checkpointed.by_module["head"] == plain.by_module["head"]
    q = "blocks.1.attn.q"
    assert checkpointed.by_module[q] == plain.by_module[q] + forward.by_module[q]
