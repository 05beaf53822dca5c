"""MixedPrecision (document 004): per-parameter dtypes, fp32 masters, loss scaling, glob errors, the Trainer."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import deepseek as ds
from deepseek.data.datasets import digits
from deepseek.optim import MixedPrecision


class Net(nn.Module):
    """Parameter names as in document 004: ``embeddings.*`` and ``layer.<i>.*``."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Linear(64, 64)
        self.layer = nn.ModuleList([nn.Linear(64, 64) for _ in range(2)])
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embeddings(x))
        for layer in self.layer:
            h = torch.relu(layer(h))
        return self.head(h)


def document_004_optimizer() -> MixedPrecision:
    from deepseek.optimizer import MixedPrecision  # the document's import, as written

    optimizer = MixedPrecision(
        base_optimizer=torch.optim.AdamW,
        fp16_params=["layer.*.weight", "layer.*.bias"],
        bf16_params=["embeddings.*"],
        loss_scale=128,
    )
    return optimizer


def test_document_004_snippet_binds_and_keeps_fp32_masters_that_the_stored_params_follow():
    torch.manual_seed(0)
    model, optimizer = Net(), document_004_optimizer()
    assert optimizer.bind(model) is optimizer
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["layer.1.bias"] == torch.float16 and dtypes["embeddings.weight"] == torch.bfloat16
    assert dtypes["head.weight"] == torch.float32
    pairs = [(p, m) for p, m in optimizer._pairs if m is not p]
    assert len(pairs) == 6 and all(m.dtype == torch.float32 for _, m in pairs)
    masters_before = [m.detach().clone() for _, m in pairs]
    x, y = torch.rand(32, 64), torch.randint(0, 10, (32,))
    for _ in range(3):
        optimizer.backward(nn.functional.cross_entropy(model(x), y))  # fp32 input: the casts are automatic
        optimizer.step()
        optimizer.zero_grad()
    assert optimizer.scale == 128 and optimizer.skipped_steps == 0
    for (p, m), before in zip(pairs, masters_before):
        assert not torch.equal(m, before)  # the masters moved...
        assert torch.equal(p, m.to(p.dtype))  # ...and the stored low-precision copies follow them
    report = optimizer.memory_report()
    assert report["before_bytes"] == 4 * sum(p.numel() for p in model.parameters())
    assert report["model_bytes"] < report["before_bytes"] and report["master_bytes"] == 4 * (3 * 64 * 65)
    assert "fp32 masters" in optimizer.report()


def test_a_pattern_that_matches_nothing_lists_nearby_names():
    with pytest.raises(ValueError, match=r"'layers\.\*\.weight' matches no parameter; nearby names: layer\.\d\.weight"):
        MixedPrecision(fp16_params=["layers.*.weight"]).bind(Net())
    with pytest.raises(ValueError, match="both fp16_params and bf16_params"):
        MixedPrecision(fp16_params=["layer.*"], bf16_params=["layer.0.*"]).bind(Net())
    with pytest.raises(ValueError, match=r"module 'layer.0' must share one dtype \(weight=fp16, bias=fp32\)"):
        MixedPrecision(fp16_params=["layer.0.weight"]).bind(Net())
    with pytest.raises(ValueError, match="loss_scale"):
        MixedPrecision(loss_scale=0)


def test_overflow_skips_the_step_dynamic_scale_backs_off_and_grows():
    model = Net()
    optimizer = MixedPrecision(fp16_params=["layer.*"], loss_scale="dynamic", growth_interval=2, lr=0.1).bind(model)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(4, 64)
    optimizer.backward(model(x).sum() * float("inf"))
    optimizer.step()
    optimizer.zero_grad()
    assert optimizer.step_was_skipped and optimizer.scale == 2.0**15
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for _ in range(2):
        optimizer.backward(model(x).mean())
        optimizer.step()
        optimizer.zero_grad()
    assert not optimizer.step_was_skipped and optimizer.scale == 2.0**16


def test_state_dict_round_trips_masters_and_scale():
    torch.manual_seed(0)
    model = Net()
    optimizer = MixedPrecision(fp16_params=["layer.*"], loss_scale="dynamic", lr=1e-2).bind(model)
    x = torch.rand(4, 64)
    optimizer.backward(model(x).mean())
    optimizer.step()
    state = optimizer.state_dict()
    fresh_model = Net()
    fresh = MixedPrecision(fp16_params=["layer.*"], loss_scale="dynamic", lr=1e-2).bind(fresh_model)
    fresh.load_state_dict(state)
    assert fresh.scale == optimizer.scale
    for (_, a), (p, b) in zip(optimizer._pairs[2:6], fresh._pairs[2:6]):
        assert torch.equal(a, b) and torch.equal(p, b.half())
    assert fresh.state_dict()["state"].keys() == state["state"].keys()


def test_trainer_binds_it_and_trains_digits():
    splits = digits(flatten=True)
    torch.manual_seed(0)
    model = Net()
    optimizer = MixedPrecision(fp16_params=["layer.*"], bf16_params=["embeddings.*"], lr=3e-3)
    trainer = ds.Trainer(model, optimizer, max_epochs=8, progress="off", grad_clip_norm=5.0)
    train = DataLoader(splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    summary = trainer.fit(train, DataLoader(splits.val, batch_size=256))
    assert optimizer.bound and model.layer[0].weight.dtype == torch.float16
    assert summary["val"]["accuracy"] > 0.9


def test_load_state_dict_relinks_param_groups_so_a_scheduler_reaches_the_base_optimizer():
    torch.manual_seed(0)
    model = Net()
    optimizer = MixedPrecision(fp16_params=["layer.*"], loss_scale=1, lr=1e-3).bind(model)
    optimizer.backward(model(torch.rand(4, 64)).mean())
    optimizer.step()
    resumed = MixedPrecision(fp16_params=["layer.*"], loss_scale=1, lr=1e-3).bind(Net())
    resumed.load_state_dict(optimizer.state_dict())
    # What a scheduler does: write the learning rate into the wrapper's param_groups.
    torch.optim.lr_scheduler.LambdaLR(resumed, lambda step: 500.0)
    assert resumed.param_groups[0]["lr"] == 0.5
    assert resumed.base.param_groups[0]["lr"] == 0.5  # the base optimizer steps with it
    assert resumed.base.state is resumed.state
    # lr 0 makes AdamW's step a no-op: the masters stay put only if the base reads the wrapper's lr
    for group in resumed.param_groups:
        group["lr"] = 0.0
    masters = [m.detach().clone() for _, m in resumed._pairs]
    resumed.backward(sum(p.float().sum() for p, _ in resumed._pairs))
    resumed.step()
    for (_, m), before in zip(resumed._pairs, masters):
        assert torch.equal(m, before)
