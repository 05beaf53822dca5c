"""`import deepseek as ds` is PyTorch-native: ds.nn/ds.optim/ds.Module are torch's own objects."""

from __future__ import annotations

import pytest
import torch

import deepseek as ds


def test_nn_is_torch_nn():
    assert ds.nn.Linear is torch.nn.Linear and ds.nn.TransformerEncoderLayer is torch.nn.TransformerEncoderLayer
    assert ds.nn.functional is torch.nn.functional and ds.Module is torch.nn.Module
    from deepseek.nn import Conv2d

    assert Conv2d is torch.nn.Conv2d


def test_optim_holds_optimizers_and_schedulers():
    from deepseek import nn, optim

    assert optim.AdamW is torch.optim.AdamW and nn.Sequential is torch.nn.Sequential
    assert optim.CosineAnnealingWarmRestarts is torch.optim.lr_scheduler.CosineAnnealingWarmRestarts
    assert isinstance(optim.WarmupCosine, type)


def test_tensor_functions_resolve_to_torch():
    assert ds.cat is torch.cat and ds.tensor is torch.tensor and ds.float16 is torch.float16
    with pytest.raises(AttributeError, match="nor has torch"):
        _ = ds.no_such_function


def test_models_build():
    model = ds.models.build("CNN", num_classes=3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert ds.models.build("mlp", in_features=12, hidden=[5])(torch.randn(4, 3, 4)).shape == (4, 10)
