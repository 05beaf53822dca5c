"""Batch-level transforms (MixUp, CutMix, SpecMix) in ``data.transforms`` run on collated batches,
seeded, after the per-sample steps."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from deepseek.config import load_config
from deepseek.train.build import build_loaders
from deepseek.train.distributed import DistInfo

MIXUP = "data.transforms=[{type: MixUp, params: {num_classes: 10, alpha: 1.0}}]"


def _first_batch(*overrides: str) -> tuple[torch.Tensor, torch.Tensor]:
    quickstart = resources.files("deepseek") / "configs" / "quickstart.yaml"  # digits, 8x8 images
    cfg = load_config(str(quickstart), ["data.batch_size=16", "data.num_workers=0", *overrides])
    train, _ = build_loaders(cfg, DistInfo())
    inputs, targets = next(iter(train))
    return inputs, targets


def test_mixup_in_a_config_mixes_a_training_batch_across_its_samples():
    inputs, targets = _first_batch(MIXUP)
    assert inputs.shape[0] == 16 and targets.shape == (16, 10)  # soft labels over the classes
    torch.testing.assert_close(targets.sum(1), torch.ones(16))
    assert ((targets > 0).sum(1) == 2).any()  # a row mixes two samples' classes
    again_inputs, again_targets = _first_batch(MIXUP)  # seeded: the same batch twice
    torch.testing.assert_close(again_inputs, inputs)
    torch.testing.assert_close(again_targets, targets)


def test_per_sample_steps_still_run_per_sample_before_the_batch_step():
    noise = "{type: GaussianNoise, params: {sigma: 0.5}}"
    mix = "{type: MixUp, params: {num_classes: 10, alpha: 1.0}}"
    clean, _ = _first_batch()
    noisy, targets = _first_batch(f"data.transforms=[{noise}, {mix}]")
    assert noisy.shape == clean.shape and targets.shape == (16, 10)
    assert not torch.allclose(noisy, clean)


def test_a_per_sample_step_after_a_batch_step_is_a_one_line_error():
    from deepseek.data.transforms import Pipeline, TransformError

    with pytest.raises(TransformError, match="MixUp"):
        Pipeline(["MixUp", "RandomHorizontalFlip"]).split()
