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


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_from_its_template_and_trains(name):
    tpl = ds.models.template(name)
    assert tpl and tpl["model"]["name"] == name, f"{name} needs models/templates/{name}.yaml"
    example = tpl["example"]
    torch.manual_seed(0)
    model = ds.models.build(name, **example.get("build", {}))
    out = model(example_input(example))
    main = out[0] if isinstance(out, tuple) else out
    assert list(main.shape) == example["output"]
    main.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "name, published",
    [
        ("resnet50", 25.6e6),
        ("bert_base", 110e6),
        ("gpt2", 124e6),
        ("vit_base_patch16", 86.6e6),
        ("resnet18", 11.7e6),
        ("lenet5", 61_706),
    ],
)
def test_published_parameter_counts(name, published):
    assert abs(ds.models.parameter_count(name) / published - 1) < 0.01


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
