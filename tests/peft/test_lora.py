"""LoRA: starts equal to the base, trains only adapters, merge/unmerge agree, adapters round-trip
and are interchangeable with the peft library's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import deepseek as ds


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(self.query(x) @ self.key(x).transpose(-1, -2) / 8**0.5, dim=-1)
        return self.out((attn @ self.value(x)).mean(1))


def base() -> nn.Module:
    torch.manual_seed(0)
    return Block()


def trained_adapter() -> nn.Module:
    model = ds.peft.apply_lora(base(), target_modules=["query", "value"], rank=4, alpha=8)
    with torch.no_grad():
        for p in ds.peft.lora_parameters(model):
            p.normal_(0, 0.2)  # as if trained
    return model


X = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))


def test_starts_equal_to_the_base_and_trains_only_adapters():
    plain = base()
    model = ds.peft.apply_lora(base(), target_modules=["query", "value"], rank=4, alpha=8)
    torch.testing.assert_close(model(X), plain(X), rtol=0, atol=0)
    model(X).sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{ab}.weight" for m in ("query", "value") for ab in "AB"}
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)


def test_merge_and_unmerge_agree():
    model = trained_adapter()
    unmerged = model(X)
    ds.peft.merge(model)
    torch.testing.assert_close(model(X), unmerged, rtol=0, atol=1e-5)
    ds.peft.unmerge(model)
    torch.testing.assert_close(model(X), unmerged, rtol=0, atol=1e-5)


def test_regex_targets_and_a_clear_error():
    model = ds.peft.apply_lora(base(), target_modules=r"(query|key)", rank=2)
    assert {n for n, _ in ds.peft.lora.lora_layers(model)} == {"query", "key"}
    with pytest.raises(ValueError, match="match no nn.Linear; the model has: query, key, value, out"):
        ds.peft.apply_lora(base(), target_modules=["q_proj"])


def test_adapter_round_trip(tmp_path):
    model = trained_adapter()
    ds.peft.save_adapter(model, tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter_model.safetensors", "adapter_config.json"}
    loaded = ds.peft.load_adapter(base(), tmp_path / "adapter")
    torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)


def test_the_peft_library_reads_our_adapter_and_we_read_its(tmp_path):
    peft = pytest.importorskip("peft")
    model = trained_adapter()
    ds.peft.save_adapter(model, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(base(), str(tmp_path / "ours"))
    torch.testing.assert_close(theirs(X), model(X), rtol=0, atol=1e-6)

    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    theirs.save_pretrained(str(tmp_path / "theirs"))
    ours = ds.peft.load_adapter(base(), tmp_path / "theirs")
    torch.testing.assert_close(ours(X), theirs(X), rtol=0, atol=1e-6)


def test_trains_through_the_trainer():
    model = ds.peft.apply_lora(base(), target_modules=["query", "value"], rank=4)
    frozen = copy.deepcopy(model.out.weight)
    y = torch.tensor([0, 2])
    opt = torch.optim.AdamW(ds.peft.lora_parameters(model), lr=1e-2)
    ds.Trainer(model, opt, max_steps=20, progress="off", tensorboard=False, metrics=()).fit([(X, y)] * 20)
    assert torch.equal(model.out.weight, frozen) and model.value.lora_B.weight.abs().sum() > 0
