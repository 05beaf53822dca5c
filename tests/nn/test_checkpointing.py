"""Checkpointing chosen submodules keeps gradients and state-dict keys; the config flag turns it on."""

from __future__ import annotations

import copy

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


def test_a_deep_copy_of_a_checkpointed_model_runs_its_own_weights():
    """EMA's AveragedModel and the Quantizer deep-copy the model: the copy must not run the original."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(3)], nn.Linear(16, 2))
    reference = copy.deepcopy(model)  # never checkpointed
    ds.nn.checkpoint_modules(model, r"[0-2]")
    keys = list(model.state_dict())
    clone = copy.deepcopy(model)
    x = torch.randn(8, 16)
    with torch.no_grad():
        for p in clone[1].parameters():
            p.zero_()
        for p in reference[1].parameters():
            p.zero_()
    assert list(clone.state_dict()) == keys
    with torch.no_grad():
        same = torch.equal(clone(x), model(x))
    assert not same, "the deep copy ran the original's weights"
    torch.testing.assert_close(clone(x), reference(x), rtol=0, atol=0)
    model.zero_grad()
    for a, b in zip(grads(reference, x), grads(clone, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # recomputed in backward with the copy's weights
    assert all(p.grad is None for p in model.parameters())  # nothing flowed into the original
    ds.nn.checkpoint_modules(clone, r"[0-2]", enable=False)
    assert "forward" not in clone[0].__dict__  # the class's forward again
    torch.testing.assert_close(clone(x), reference(x), rtol=0, atol=0)


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
