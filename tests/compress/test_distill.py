"""Distiller: the loss equals a hand computation; feature pairs; a student trains from a teacher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

pytest.importorskip("torchao")

import deepseek as ds  # noqa: E402
from deepseek.compress import Distiller  # noqa: E402
from deepseek.data.datasets import digits  # noqa: E402


def test_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[2.0, 1.0, 0.0]])
    y = torch.tensor([0])
    d = Distiller(nn.Linear(1, 1), nn.Linear(1, 1), temperature=2.0, alpha=0.7)
    p_t = [math.exp(v / 2) for v in (2.0, 1.0, 0.0)]
    p_t = [v / sum(p_t) for v in p_t]
    p_s = [math.exp(v / 2) for v in (1.0, 0.0, -1.0)]
    p_s = [v / sum(p_s) for v in p_s]
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    ce = -math.log(math.exp(1.0) / (math.exp(1.0) + 1 + math.exp(-1.0)))
    assert float(d.loss(s, t, y)) == pytest.approx(0.7 * 4 * kl + 0.3 * ce, rel=1e-6)


def test_feature_pairs_add_mse_and_shape_mismatch_is_explained():
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    student = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    d = Distiller(teacher, student, alpha=1.0, feature_pairs=[("0", "0")], feature_weight=2.0)
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    loss, _, _ = d.step(student, (x, y))
    soft = d.loss.__func__  # the same loss without the feature term, for comparison
    d.pairs = []
    without = soft(d, student(x), teacher(x), y)
    assert float(loss - without) == pytest.approx(
        2.0 * float(nn.functional.mse_loss(student[0](x), teacher[0](x))), rel=1e-5
    )
    bad = Distiller(teacher, nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), feature_pairs=[("0", "0")])
    with pytest.raises(ValueError, match="shapes"):
        bad.step(bad.student, (x, y))


def test_student_learns_from_the_teacher_in_the_trainer():
    splits = digits(flatten=True)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    train = DataLoader(splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(splits.val, batch_size=256)
    ds.Trainer(teacher, torch.optim.AdamW(teacher.parameters(), lr=3e-3), max_epochs=6, progress="off").fit(train)
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    trainer = ds.Trainer(student, optimizer, max_epochs=8, progress="off", step_fn=Distiller(teacher, student).step)
    summary = trainer.fit(train, val)
    assert summary["val"]["accuracy"] > 0.85 and all(not p.requires_grad for p in teacher.parameters())
