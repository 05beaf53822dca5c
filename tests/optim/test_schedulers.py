"""LR schedulers: warm-up + cosine closed form, torch's restarts and step, exact state round trip."""

from __future__ import annotations

import math

import pytest
import torch

from deepseek.optim import WarmupCosine, build_scheduler


def opt(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs(sched, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def test_warmup_then_cosine_to_min():
    s = WarmupCosine(opt(), total_steps=10, warmup_steps=4, min_lr_ratio=0.1)
    got = lrs(s, 12)
    assert got[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    want_cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(7)]
    assert got[4:11] == pytest.approx(want_cos)
    assert got[11] == pytest.approx(0.1)


def test_state_dict_round_trip_resumes_the_same_curve():
    a = WarmupCosine(opt(), total_steps=20, warmup_steps=5)
    lrs(a, 7)
    b = WarmupCosine(opt(), total_steps=20, warmup_steps=5)
    b.load_state_dict(a.state_dict())
    b.optimizer.param_groups[0]["lr"] = a.optimizer.param_groups[0]["lr"]
    assert lrs(a, 10) == lrs(b, 10)


def test_registered_torch_schedulers_match_torch():
    ours = build_scheduler("cosine_restarts", opt(), total_steps=100, T_0=5, T_mult=2)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt(), T_0=5, T_mult=2)
    assert lrs(ours, 30) == pytest.approx(lrs(ref, 30))
    step = build_scheduler("step", opt(), total_steps=100, step_size=3, gamma=0.5)
    assert lrs(step, 7) == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])


def test_import_path_scheduler_gets_no_total_steps():
    s = build_scheduler("torch.optim.lr_scheduler:ExponentialLR", opt(), total_steps=10, gamma=0.5)
    assert lrs(s, 3) == pytest.approx([1, 0.5, 0.25])
