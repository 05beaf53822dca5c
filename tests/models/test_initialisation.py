"""GPT-2 and BERT start from the reference initialisation: a fresh LM predicts close to uniformly, so its
first loss on random tokens is about ln(vocab); weights follow GPT-2 / BERT's N(0, 0.02) scheme."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import deepseek as ds

VOCAB = 1000


def initial_lm_loss(model: torch.nn.Module, ids: torch.Tensor, shift: bool) -> float:
    """Next-token loss (``shift``, GPT-2) or the loss of reconstructing each token (BERT's MLM head)."""
    with torch.no_grad():
        logits = model(ids)
    if shift:
        logits, ids = logits[:, :-1], ids[:, 1:]
    return float(F.cross_entropy(logits.reshape(-1, VOCAB), ids.reshape(-1)))


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("gpt2", {"vocab_size": VOCAB, "max_positions": 32, "dim": 64, "depth": 2, "heads": 4}),
        ("bert_base", {"head": "mlm", "vocab_size": VOCAB, "dim": 64, "depth": 2, "heads": 4}),
    ],
)
def test_fresh_language_model_loss_is_close_to_ln_vocab(name, kwargs):
    torch.manual_seed(0)
    model = ds.models.build(name, **kwargs).eval()
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    assert abs(initial_lm_loss(model, ids, shift=name == "gpt2") - math.log(VOCAB)) < 0.5


def test_gpt2_follows_the_reference_initialisation():
    torch.manual_seed(0)
    depth = 4
    model = ds.models.build("gpt2", vocab_size=VOCAB, max_positions=64, dim=128, depth=depth, heads=4)
    assert abs(float(model.tok.weight.detach().std()) - 0.02) < 0.002
    assert abs(float(model.blocks[0].attn.q.weight.detach().std()) - 0.02) < 0.002
    residual = 0.02 / math.sqrt(2 * depth)  # GPT-2 scales the projections that write into the residual stream
    assert abs(float(model.blocks[0].attn.proj.weight.detach().std()) / residual - 1) < 0.1
    assert abs(float(model.blocks[0].mlp[2].weight.detach().std()) / residual - 1) < 0.1
    assert float(model.blocks[0].attn.v.bias.detach().abs().max()) == 0.0
    assert torch.equal(model.ln_f.weight, torch.ones(128)) and float(model.ln_f.bias.detach().abs().max()) == 0.0


def test_bert_follows_the_reference_initialisation():
    torch.manual_seed(0)
    model = ds.models.build("bert_base", vocab_size=VOCAB, dim=128, depth=2, heads=4)
    for weight in (model.word.weight, model.position.weight, model.blocks[0].ffn[0].weight, model.classifier.weight):
        assert abs(float(weight.detach().std()) - 0.02) < 0.002
    assert abs(float(model.blocks[0].attn.q_proj.weight.detach().std()) - 0.02) < 0.002
    assert float(model.blocks[0].attn.k_proj.bias.detach().abs().max()) == 0.0
    assert float(model.blocks[0].ffn[0].bias.detach().abs().max()) == 0.0
    assert torch.equal(model.emb_norm.weight, torch.ones(128))
