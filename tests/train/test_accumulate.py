"""``ds.GradientAccumulator`` for hand-written loops: exact like one big batch, DDP sync once per window."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn as nn

import deepseek as ds


def _model_and_data(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    return model, torch.randn(10, 5, dtype=torch.float64), torch.randint(0, 3, (10,))


def _big_batch_steps(windows: list[slice]) -> list[torch.Tensor]:
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for w in windows:
        nn.functional.cross_entropy(model(x[w]), y[w]).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    ("accum_steps", "micro", "windows"),
    [
        (3, [slice(0, 4), slice(4, 8), slice(8, 10)], [slice(0, 10)]),  # uneven last micro-batch
        (3, [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)], [slice(0, 9), slice(9, 10)]),  # short last window
    ],
)
def test_accumulated_steps_equal_one_big_batch_per_window(accum_steps, micro, windows):
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    accumulator = ds.GradientAccumulator(accum_steps)
    stepped = []
    for i, s in enumerate(micro):
        with accumulator.accumulate(model, final=i == len(micro) - 1):
            accumulator.backward(nn.functional.cross_entropy(model(x[s]), y[s]), batch_size=len(y[s]))
        stepped.append(accumulator.step(model, opt))
    assert sum(stepped) == len(windows)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())  # zeroed after the step
    for got, want in zip(model.parameters(), _big_batch_steps(windows), strict=True):
        torch.testing.assert_close(got.detach(), want, atol=1e-6, rtol=0)


class CountingNoSync(nn.Linear):
    """Stands in for DDP: counts the micro-steps whose forward ran inside ``no_sync``."""

    def __init__(self) -> None:
        super().__init__(2, 1)
        self.in_no_sync = False
        self.unsynced_forwards = 0
        self.synced_forwards = 0

    @contextlib.contextmanager
    def no_sync(self):
        self.in_no_sync = True
        try:
            yield
        finally:
            self.in_no_sync = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_no_sync:
            self.unsynced_forwards += 1
        else:
            self.synced_forwards += 1
        return super().forward(x)


def test_no_sync_is_entered_for_every_micro_step_but_the_last_of_each_window():
    model = CountingNoSync()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    accumulator = ds.GradientAccumulator(accum_steps=4)
    n_micro = 10  # windows of 4, 4 and a final 2
    steps = 0
    for i in range(n_micro):
        with accumulator.accumulate(model, final=i == n_micro - 1):
            accumulator.backward(model(torch.randn(3, 2)).mean(), batch_size=3)
        steps += accumulator.step(model, opt)
    assert steps == 3
    assert model.synced_forwards == 3 and model.unsynced_forwards == 7


def test_the_plain_step_call_steps_only_when_the_window_is_full():
    model, x, y = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    accumulator = ds.GradientAccumulator(accum_steps=2)
    accumulator.backward(nn.functional.cross_entropy(model(x[:5]), y[:5]), batch_size=5)
    assert accumulator.step(model, opt) is False
    accumulator.backward(nn.functional.cross_entropy(model(x[5:]), y[5:]), batch_size=5)
    assert accumulator.step(model, opt) is True
    for got, want in zip(model.parameters(), _big_batch_steps([slice(0, 10)]), strict=True):
        torch.testing.assert_close(got.detach(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_accum_steps_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="accum_steps"):
        ds.GradientAccumulator(bad)
