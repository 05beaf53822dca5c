"""MixedPrecisionTrainer (document 003) and unit-wise adaptive gradient clipping."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from deepseek.data.datasets import digits


def test_document_003_snippet_trains_with_dynamic_scaling_from_65536():
    from deepseek.amp import GradScaler
    from deepseek.optim import AdamW, MixedPrecisionTrainer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    # document 003, with AdamW given the parameters it needs
    trainer = MixedPrecisionTrainer(
        model, optimizer=AdamW(model.parameters(), lr=5e-4), scaler=GradScaler(), fp16_enable=True
    )
    assert trainer.scaler.get_scale() == 65536.0 and trainer.scaler.get_growth_factor() == 2.0
    splits = digits(flatten=True)
    loader = DataLoader(splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    losses = trainer.fit(loader, epochs=10)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 masters, fp16 compute


def test_inf_gradients_skip_the_step_and_halve_the_scale():
    from deepseek.optim import MixedPrecisionTrainer

    model = nn.Linear(4, 2)
    trainer = MixedPrecisionTrainer(model)
    before = model.weight.detach().clone()
    trainer.step((torch.full((2, 4), 1e5), torch.tensor([0, 1])), loss_fn=lambda out, y: (out * 1e30).sum())
    assert trainer.skipped_steps == 1 and trainer.scaler.get_scale() == 32768.0
    assert torch.equal(model.weight.detach(), before)


def test_adaptive_clipping_clips_only_units_whose_gradient_outgrows_their_weights():
    from deepseek.optim import adaptive_clip_grad_

    w = nn.Parameter(torch.ones(3, 4))  # every unit's weight norm is 2
    w.grad = torch.tensor([[0.001] * 4, [1.0] * 4, [0.0] * 4])  # unit norms 0.002, 2, 0
    assert adaptive_clip_grad_([w], clip_factor=0.01) == 1
    norms = w.grad.norm(dim=1)
    assert torch.allclose(norms, torch.tensor([0.002, 0.02, 0.0]))  # unit 1 clipped to 0.01 * 2


@pytest.mark.parametrize("clip", ["adaptive", 1.0, None])
def test_clip_modes_run(clip):
    from deepseek.optim import MixedPrecisionTrainer

    torch.manual_seed(0)
    trainer = MixedPrecisionTrainer(nn.Linear(8, 3), clip=clip, fp16_enable=False)
    loss = trainer.step((torch.randn(4, 8), torch.tensor([0, 1, 2, 0])))
    assert loss > 0 and trainer.steps == 1
    with pytest.raises(ValueError, match="clip"):
        MixedPrecisionTrainer(nn.Linear(2, 2), clip="sometimes")
