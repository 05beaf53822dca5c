"""deepseek.amp: document 000's loop as written; GradScaler skips on inf, backs off, grows, round-trips."""

from __future__ import annotations

import torch
import torch.nn as nn

from deepseek.amp import GradScaler, auto_cast


def test_document_000_loop_runs_as_written():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = GradScaler(init_scale=2**10, growth_interval=1000)
    x = torch.randn(8, 16)
    before = [p.detach().clone() for p in model.parameters()]
    with auto_cast():
        loss = model(x).pow(2).mean()
    assert loss.dtype == torch.bfloat16  # CPU autocast defaults to bfloat16
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 2**10 and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_decorator_takes_the_device_from_its_arguments():
    @auto_cast()
    def forward(layer, x):
        return layer(x)

    assert forward(nn.Linear(4, 4), torch.randn(2, 4)).dtype == torch.bfloat16
    with auto_cast(dtype=torch.float16):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float16
    with auto_cast(enabled=False):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32


def test_scaler_skips_inf_steps_backs_off_grows_and_round_trips():
    w = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = GradScaler(init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2)

    def step(value: float) -> None:
        opt.zero_grad()
        scaler.scale((w * value).sum()).backward()
        scaler.step(opt)
        scaler.update()

    step(float("inf"))
    assert torch.equal(w.detach(), torch.ones(3)) and scaler.get_scale() == 4.0  # skipped, backed off
    step(1.0)
    step(1.0)
    assert scaler.get_scale() == 8.0 and not torch.equal(w.detach(), torch.ones(3))  # grew after 2 good steps
    restored = GradScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.get_scale() == 8.0 and restored.state_dict() == scaler.state_dict()
