"""Checkpointing chosen submodules keeps gradients and state-dict keys; the config flag turns it on."""

from __future__ import annotations

import torch
import torch.nn as nn

import deepseek as ds
from deepseek.train.build import build_run


def grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    model(x).pow(2).mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def test_checkpointed_submodules_give_the_same_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(4)], nn.Linear(16, 2))
    x = torch.randn(8, 16)
    keys, plain = list(model.state_dict()), grads(model, x)
    calls = []
    model[1][0].register_forward_hook(lambda m, i, o: calls.append(1))
    assert ds.nn.checkpoint_modules(model, r"[0-3]") == ["0", "1", "2", "3"]
    checkpointed = grads(model, x)
    assert len(calls) == 2  # the forward, and its recomputation in backward
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert list(model.state_dict()) == keys
    ds.nn.checkpoint_modules(model, [nn.Sequential], enable=False)
    calls.clear()
    grads(model, x)
    assert len(calls) == 1


def test_config_flag_enables_checkpointing(tmp_path):
    cfg = ds.load_config(None, data={"model": {"name": "vit_tiny", "image_size": 8, "patch": 4, "num_classes": 10},
                                     "data": {"name": "digits"}, "train": {"gradient_checkpointing": True, "max_steps": 1}})  # fmt: skip
    run = build_run(cfg)
    assert run.model.checkpointing
    bad = ds.load_config(
        None,
        data={
            "model": {"name": "mlp", "in_features": 64},
            "data": {"name": "digits"},
            "train": {"gradient_checkpointing": True},
        },
    )
    try:
        build_run(bad)
    except ds.ConfigError as exc:
        assert "checkpoint_modules" in str(exc)
    else:
        raise AssertionError("expected a ConfigError")
