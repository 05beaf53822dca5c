"""LoRA on every ``nn.Linear`` of each built-in transformer, attention projections included
(``nn.MultiheadAttention`` and ``nn.Transformer`` read ``out_proj.weight`` / ``linear1.weight`` directly):
forward and backward run, only adapters get gradients, and merging keeps the output."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn as nn

import deepseek as ds


def ids(*shape: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.randint(1, 50, shape, generator=torch.Generator().manual_seed(2))


TINY = {
    "bert_base": ({"vocab_size": 50, "dim": 16, "depth": 1, "heads": 2, "num_classes": 3}, ids(2, 6)),
    "gpt2": ({"vocab_size": 50, "max_positions": 16, "dim": 16, "depth": 1, "heads": 2}, ids(2, 6)),
    "vit_tiny": ({"image_size": 32, "num_classes": 3}, lambda: torch.rand(2, 3, 32, 32)),
    "moe_transformer": (
        {"vocab_size": 50, "dim": 16, "depth": 1, "heads": 2, "num_experts": 2, "top_k": 2, "num_classes": 3},
        ids(2, 6),
    ),
    "transformer": (
        {"src_vocab": 50, "tgt_vocab": 50, "d_model": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff": 32},
        lambda: (ids(2, 7)(), ids(2, 5)()),
    ),
    "conformer": (
        {"encoder": {"num_layers": 1, "d_model": 16, "attention_heads": 2}, "decoder": {"vocab_size": 10, "embedding_dim": 16}},
        lambda: torch.randn(2, 20, 80, generator=torch.Generator().manual_seed(3)),
    ),
}


def adapted(name: str) -> tuple[nn.Module, list[str]]:
    """The tiny model with LoRA (as if trained: B != 0) on every ``nn.Linear``, and those layers' names."""
    torch.manual_seed(0)
    model = ds.models.build(name, **TINY[name][0])
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    ds.peft.apply_lora(model, target_modules=r".*", rank=2, alpha=4)
    with torch.no_grad():
        for p in ds.peft.lora_parameters(model):
            p.normal_(0, 0.1)
    return model, linears


@pytest.mark.parametrize("name", list(TINY))
def test_lora_on_every_linear_trains_only_adapters(name):
    model, linears = adapted(name)
    assert {n for n, _ in ds.peft.lora.lora_layers(model)} == set(linears)
    assert any("attn" in n for n in linears)  # attention projections are among them
    model(TINY[name][1]()).float().pow(2).mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_" in n for n in with_grad)
    lora = {n for n, p in model.named_parameters() if ".lora_" in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora
    assert with_grad == lora, f"adapters without gradient: {sorted(lora - with_grad)}"


@pytest.mark.parametrize("name", list(TINY))
def test_merge_keeps_the_output_of_every_built_in_transformer(name):
    model, _ = adapted(name)
    model.eval()
    x = TINY[name][1]()
    with torch.no_grad():  # also takes the fused inference paths of nn.MultiheadAttention / nn.Transformer
        unmerged = model(x)
        ds.peft.merge(model)
        torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)
        ds.peft.unmerge(model)
        torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)
    torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)  # the autograd path agrees too


def test_readme_bert_example_runs_and_the_adapter_moves_the_output(tmp_path):
    torch.manual_seed(0)
    bert = ds.models.build("bert_base", num_classes=4, vocab_size=50, dim=16, depth=2, heads=2, dropout=0.0)
    x = ids(2, 6)()
    before, hidden = bert(x), bert.encode(x)
    bert = ds.peft.apply_lora(bert, target_modules=r".*attn.out_proj|.*ffn\.0", rank=8, alpha=16)
    assert {n for n, _ in ds.peft.lora.lora_layers(bert)} == {
        f"blocks.{i}.{m}" for i in range(2) for m in ("attn.out_proj", "ffn.0")
    }
    torch.testing.assert_close(bert(x), before, rtol=0, atol=1e-6)  # B = 0: the base model at first
    with torch.no_grad():
        for layer in (bert.blocks[0].attn.out_proj, bert.blocks[1].attn.out_proj):
            layer.lora_B.weight.normal_(0, 0.1)  # not a constant: LayerNorm would remove an equal shift
    assert (bert.encode(x) - hidden).abs().max() > 1e-2  # an adapter on out_proj changes the attention output
    ds.peft.save_adapter(bert, tmp_path / "adapter")
    torch.manual_seed(0)
    fresh = ds.models.build("bert_base", num_classes=4, vocab_size=50, dim=16, depth=2, heads=2, dropout=0.0)
    torch.testing.assert_close(ds.peft.load_adapter(fresh, tmp_path / "adapter")(x), bert(x), rtol=0, atol=1e-6)
