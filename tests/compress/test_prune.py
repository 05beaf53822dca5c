"""Structured pruning: fewer parameters, the same output shape, still trains; heads and FFN neurons."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

pytest.importorskip("torch_pruning")

import deepseek as ds  # noqa: E402
from deepseek.compress.prune import prune  # noqa: E402
from deepseek.data.datasets import digits  # noqa: E402


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_pruned_cnn_is_smaller_keeps_its_output_shape_and_trains(importance):
    splits = digits()
    torch.manual_seed(0)
    model = ds.models.build("simple_cnn", in_channels=1, num_classes=10, width=32)
    x, y = next(iter(DataLoader(splits.train, batch_size=32)))
    report = prune(model, x[:2], sparsity=0.5, importance=importance, calib_batch=(x, y))
    assert report.params_after < 0.4 * report.params_before and report.macs_after < 0.4 * report.macs_before
    assert model(x).shape == (32, 10)
    summary = ds.Trainer(model, max_epochs=3, progress="off").fit(
        DataLoader(splits.train, batch_size=64, shuffle=True), DataLoader(splits.val, batch_size=256)
    )
    assert summary["val"]["accuracy"] > 0.8  # fine-tuning the pruned network works


def test_flops_target_is_reached_in_rounds():
    model = ds.models.build("resnet18", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    report = prune(model, x, sparsity=None, flops_target=0.5)
    assert report.macs_after <= 0.5 * report.macs_before and report.macs_after > 0.25 * report.macs_before
    assert report.steps > 1 and model(x).shape == (2, 10)


def test_minilm_loses_heads_and_ffn_neurons_but_keeps_its_width():
    pytest.importorskip("transformers")
    model = ds.models.build("minilm", num_classes=4).eval()
    inputs = {"input_ids": torch.randint(1000, 20000, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    prune(model, (inputs,), sparsity=0.25)
    layer = model.encoder.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 9 and layer.attention.self.query.out_features == 9 * 32
    assert layer.intermediate.dense.out_features == 1152 and model.encoder.config.hidden_size == 384
    assert model(inputs).shape == (2, 4)


def test_bad_targets_are_explained():
    model = ds.models.build("mlp", in_features=8, num_classes=3)
    with pytest.raises(ValueError, match="sparsity"):
        prune(model, torch.randn(1, 8), sparsity=1.5)
    with pytest.raises(ValueError, match="taylor"):
        prune(model, torch.randn(1, 8), importance="taylor")
    with pytest.raises(ValueError, match="importance"):
        prune(model, torch.randn(1, 8), importance="l3")


@pytest.mark.slow  # torch-pruning traces two models: seconds
@pytest.mark.parametrize(
    "name, kwargs, inputs",
    [
        ("vit_tiny", {"image_size": 32, "patch": 8, "num_classes": 10}, lambda: torch.randn(2, 3, 32, 32)),
        ("bert_base", {"dim": 64, "depth": 2, "heads": 4, "vocab_size": 100}, lambda: torch.randint(0, 100, (2, 12))),
    ],
)
def test_ds_attention_loses_whole_heads(name, kwargs, inputs):
    """ds's attention keeps q, k and v separate: pruning removes whole heads and the model still runs."""
    import warnings

    torch.manual_seed(0)
    model, x = ds.models.build(name, **kwargs), inputs()
    attention = [m for m in model.modules() if type(m).__name__ == "MultiHeadAttention"]
    heads_before = sum(m.heads for m in attention)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning on the class token / positions it leaves alone
        report = ds.compress.prune(model, x, sparsity=0.5)
    assert report.params_after < report.params_before
    assert model(x).shape[0] == 2
    for m in attention:
        assert m.q_proj.out_features == m.k_proj.out_features == m.v_proj.out_features == m.heads * m.head_dim
    assert sum(m.heads for m in attention) < heads_before
