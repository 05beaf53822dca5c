"""timm-style: every registered model builds from its shipped template, runs forward and backward on
its example input and gives the declared output shape; reference architectures match published
parameter counts; GPT-2's KV cache; gradient checkpointing leaves gradients unchanged."""

from __future__ import annotations

import pytest
import torch

import deepseek as ds

MODELS = ds.models.list_models()


def tensor(shape: list[int], dtype: str | None, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 30, shape, generator=g) if dtype == "long" else torch.rand(shape, generator=g)


def example_input(example: dict):
    """The example's input: one tensor, a tuple of tensors (``inputs``) or a graph batch (``graph``)."""
    g = torch.Generator().manual_seed(0)
    if "graph" in example:
        from deepseek.data.graph import Graph, collate_graphs

        spec = example["graph"]
        graphs = [
            Graph(torch.randn(n, spec["features"], generator=g), torch.stack([torch.arange(n - 1), torch.arange(1, n)]))
            for n in spec["nodes"]
        ]
        return collate_graphs(graphs)
    if "tokens" in example:  # a Tokenize + TruncatePad batch
        ids = torch.randint(1000, 2000, example["tokens"], generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "inputs" in example:
        dtypes = (
            example["dtype"]
            if isinstance(example.get("dtype"), list)
            else [example.get("dtype")] * len(example["inputs"])
        )
        return tuple(tensor(shape, dt, g) for shape, dt in zip(example["inputs"], dtypes))
    return tensor(example["input"], example.get("dtype"), g)


# Smaller builds for the models whose template example is big, keeping the example's output shape, so
# that every model runs fast under fp32 and CPU bf16 autocast (minilm is pretrained: it has one size).
SMALL = {
    "gpt2": {"dim": 32, "depth": 2, "heads": 4, "max_positions": 16},
    "bert_base": {"dim": 32, "depth": 2, "heads": 4},
    "transformer": {"d_model": 32, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff": 64},
    "unet": {"base": 8},
    "moe_transformer": {"dim": 32, "depth": 2, "heads": 4},
    "cross_modal_hashing": {"dim": 32},
    "lstm_classifier": {"input_dim": 32, "hidden": 32},
    "tcn": {"width": 16},
}


def tensors_of(out) -> list[torch.Tensor]:
    """The output's tensors: the tensor itself or every tensor part of a tuple/list output."""
    return [t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_from_its_template_and_trains(name, precision):
    """timm's check: forward, backward of every output part, and every trainable parameter gets a gradient
    (DDP's default find_unused_parameters=False fails at the second step otherwise), in fp32 and bf16."""
    tpl = ds.models.template(name)
    assert tpl and tpl["model"]["name"] == name, f"{name} needs models/templates/{name}.yaml"
    example = tpl["example"]
    torch.manual_seed(0)
    model = ds.models.build(name, **{**example.get("build", {}), **SMALL.get(name, {})})
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        parts = tensors_of(model(example_input(example)))
    assert list(parts[0].shape) == example["output"]
    assert all(bool(torch.isfinite(t).all()) for t in parts if t.is_floating_point())
    sum(t.float().pow(2).mean() for t in parts if t.is_floating_point()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name} ({precision}): no gradient for {missing}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)


def padded_batch(vocab: int) -> dict[str, torch.Tensor]:
    """A Tokenize + TruncatePad style batch ``(2, 10)`` whose second row has 4 real tokens."""
    ids = torch.randint(1, vocab, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:], ids[1, 4:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "name, kwargs, inputs",
    [
        ("bert_base", {"head": "mlm", "vocab_size": 50, "dim": 32, "depth": 2, "heads": 4}, lambda: padded_batch(50)),
        ("bert_base", {"head": "none", "vocab_size": 50, "dim": 32, "depth": 1, "heads": 4}, lambda: padded_batch(50)),
        # 16 experts, top-1, 3 tokens: most experts get no token in the step
        (
            "moe_transformer",
            {"vocab_size": 50, "dim": 32, "depth": 2, "heads": 4, "num_experts": 16, "top_k": 1},
            lambda: torch.randint(0, 50, (1, 3)),
        ),
        ("moe_transformer", {"vocab_size": 50, "dim": 32, "depth": 1, "heads": 4}, lambda: padded_batch(50)),
        ("lstm_classifier", {"vocab_size": 50, "input_dim": 16, "hidden": 16, "layers": 2}, lambda: padded_batch(50)),
    ],
)
def test_every_parameter_gets_a_gradient_in_other_configurations(name, kwargs, inputs, precision):
    torch.manual_seed(0)
    model = ds.models.build(name, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out = model(inputs())
    out.float().pow(2).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name} {kwargs}: no gradient for {missing}"


@pytest.mark.parametrize(
    "name, overrides, published",
    [  # the six the README states, exactly (torchvision / Hugging Face reference models), and two more
        ("resnet50", {}, 25_557_032),
        ("bert_base", {"head": "none"}, 109_482_240),  # encoder + pooler, as HF's BertModel
        ("bert_base", {"num_classes": 2}, 109_482_240 + 768 * 2 + 2),  # "+ head"
        ("gpt2", {}, 124_439_808),
        ("mobilenet_v3_large", {}, 5_483_032),
        ("vit_base_patch16", {}, 86_567_656),
        ("efficientnet_b0", {}, 5_288_548),
        ("resnet18", {}, 11_689_512),
        ("lenet5", {}, 61_706),
    ],
)
def test_published_parameter_counts(name, overrides, published):
    assert ds.models.parameter_count(name, **overrides) == published


def test_at_least_23_architectures():
    assert len(MODELS) >= 23


def test_document_003_conformer_template_as_written():
    cfg = ds.load_config(None, data={"data": {"name": "digits"}, "model": {
        "name": "Conformer", "encoder": {"num_layers": 12, "d_model": 512, "attention_heads": 8},
        "decoder": {"vocab_size": 5000, "embedding_dim": 512}}})  # fmt: skip
    with torch.device("meta"):
        model = ds.models.build(cfg.model.name, **cfg.model.kwargs)
    assert len(model.blocks) == 12 and model.decoder[-1].out_features == 5001


def test_names_are_case_insensitive_and_overrides_apply():
    model = ds.models.build("ResNet18", num_classes=7)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_gpt2_kv_cache_generation_equals_uncached_greedy():
    torch.manual_seed(0)
    model = ds.models.build("gpt2", vocab_size=97, max_positions=64, dim=32, depth=2, heads=4).eval()
    prompt = torch.randint(0, 97, (2, 6))
    cached = model.generate(prompt, 12, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, 12, use_cache=False))
    streamed = torch.stack(list(model.stream(prompt, 12)), dim=1)
    assert torch.equal(streamed, cached[:, 6:])


@pytest.mark.parametrize(
    "name, kwargs, x",
    [
        ("vit_tiny", {"image_size": 32}, lambda: torch.rand(2, 3, 32, 32)),
        (
            "gpt2",
            {"vocab_size": 50, "max_positions": 16, "dim": 32, "depth": 2, "heads": 4},
            lambda: torch.randint(0, 50, (2, 8)),
        ),
        (
            "bert_base",
            {"dim": 32, "depth": 2, "heads": 4, "vocab_size": 50, "dropout": 0.0},
            lambda: torch.randint(0, 50, (2, 8)),
        ),
        (
            "moe_transformer",
            {"vocab_size": 50, "dim": 32, "depth": 2, "heads": 4, "num_experts": 4},
            lambda: torch.randint(0, 50, (2, 8)),
        ),
        (
            "transformer",
            {
                "src_vocab": 40,
                "tgt_vocab": 40,
                "d_model": 32,
                "heads": 4,
                "encoder_layers": 2,
                "decoder_layers": 2,
                "ff": 64,
                "dropout": 0.0,
            },
            lambda: (torch.randint(0, 40, (2, 7)), torch.randint(0, 40, (2, 5))),
        ),
        (
            "conformer",
            {
                "encoder": {"num_layers": 2, "d_model": 32, "attention_heads": 4, "dropout": 0.0},
                "decoder": {"vocab_size": 20, "embedding_dim": 32},
            },
            lambda: torch.randn(2, 40, 80),
        ),
    ],
)
def test_gradient_checkpointing_gives_the_same_gradients(name, kwargs, x):
    torch.manual_seed(0)
    inputs = x()
    model = ds.models.build(name, **kwargs)

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(inputs).float().pow(2).mean().backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.gradient_checkpointing_enable()
    checkpointed = grads()
    model.gradient_checkpointing_disable()
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_pretrained_minilm_loads_offline_and_lora_trains_a_fraction():
    pytest.importorskip("transformers")
    model = ds.models.build("minilm", num_classes=10, lora_rank=8)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert abs((total - trainable) / 22.7e6 - 1) < 0.01  # the frozen pretrained encoder
    assert trainable == 8 * (384 + 384) * 2 * 6 + 384 * 10 + 10  # LoRA on q, v in 6 layers, plus the head
    emb = model.embed(tokenized(["a question about money", "what is a computer program"]))
    assert emb.shape == (2, 384)


def tokenized(texts: list[str]) -> dict[str, torch.Tensor]:
    from deepseek.data import Pipeline

    tok = Pipeline(["Tokenize", {"type": "TruncatePad", "params": {"max_length": 16}}])
    return torch.utils.data.default_collate([tok(t) for t in texts])
