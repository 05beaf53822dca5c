"""Trainer behaviour in one process: gradient accumulation, EMA, early stopping, precision, step_fn."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from deepseek.amp.policy import resolve_precision


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it stepped on."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, lr=lr)
        self.seen: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
        return super().step(closure)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def trainer(model, opt, **kw) -> ds.Trainer:
    kw.setdefault("max_steps", 1)
    return ds.Trainer(model, opt, progress="off", tensorboard=False, metrics=(), **kw)


def reference_grads(x, y) -> list[torch.Tensor]:
    model = make_model()
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad for p in model.parameters()]


@pytest.mark.parametrize("sizes", [[8, 8, 8, 8], [8, 8, 8, 6], [3, 11, 5, 9]])
def test_accumulated_gradients_equal_one_big_batch(sizes):
    x, y = data(sum(sizes))
    chunks, start = [], 0
    for s in sizes:
        chunks.append((x[start : start + s], y[start : start + s]))
        start += s
    model = make_model()
    opt = RecordingSGD(model.parameters())
    trainer(model, opt, accumulate_grad_batches=len(sizes)).fit(chunks)
    assert len(opt.seen) == 1
    for got, want in zip(opt.seen[0], reference_grads(x, y)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_short_last_window_of_an_epoch_is_its_own_exact_step():
    x, y = data(40)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]  # 5 micro-batches, accumulate 4
    model = make_model()
    opt = RecordingSGD(model.parameters(), lr=0.0)  # lr 0: the second step sees the same weights
    t = trainer(model, opt, accumulate_grad_batches=4, max_steps=None, max_epochs=1)
    t.fit(batches)
    assert t.global_step == 2 and len(opt.seen) == 2
    for got, want in zip(opt.seen[1], reference_grads(x[32:], y[32:])):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_ema_follows_its_formula_and_is_used_for_validation():
    x, y = data(64)
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    model = make_model()
    decay = 0.8
    expected = None  # torch's AveragedModel starts from the weights after the first step
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    t = trainer(model, opt, ema_decay=decay, max_steps=None, max_epochs=1, val_every_epochs=None)
    # Re-run the same steps by hand to know the weights after each step.
    ref = make_model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for xb, yb in batches:
        nn.functional.cross_entropy(ref(xb), yb).backward()
        ref_opt.step()
        ref_opt.zero_grad()
        now = [p.detach().clone() for p in ref.parameters()]
        expected = now if expected is None else [decay * e + (1 - decay) * p for e, p in zip(expected, now)]
    t.fit(batches)
    for got, want in zip(t.ema.module.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        want_loss = nn.functional.cross_entropy(t.ema.module(x), y).item()
    assert t.validate([(x, y)])["val/loss"] == pytest.approx(want_loss, rel=1e-6)
    assert t.validate([(x, y)])["val/loss"] != pytest.approx(nn.functional.cross_entropy(model(x), y).item(), rel=1e-3)


def test_early_stopping_stops_after_patience_validations():
    x, y = data(32)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing improves
    t = trainer(model, opt, max_steps=None, max_epochs=50, early_stopping={"monitor": "val/loss", "patience": 3})
    summary = t.fit([(x, y)], [(x, y)])
    assert t.epoch == 3 and summary["stop_reason"].startswith("early stopping")


def test_validation_every_n_steps_and_metrics(tmp_path):
    x, y = data(64)
    model = make_model()
    seen = []

    class Spy:
        def on_validation_end(self, trainer, metrics):
            seen.append((trainer.global_step, sorted(metrics)))

    t = ds.Trainer(
        model,
        max_steps=6,
        val_every_steps=2,
        val_every_epochs=None,
        progress="off",
        tensorboard=False,
        callbacks=[Spy()],
    )
    t.fit([(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)], [(x, y)])
    assert [s for s, _ in seen] == [2, 4, 6]
    assert seen[0][1] == ["val/accuracy", "val/loss"]


def test_auto_precision_never_picks_low_precision_on_cpu():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", torch.device("cpu"))


@pytest.mark.parametrize("precision", ["fp16-mixed", "bf16-mixed"])
def test_mixed_precision_trains_on_cpu(precision):
    x, y = data(256)
    model = make_model()
    t = trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), precision=precision, max_steps=30)
    before = nn.functional.cross_entropy(model(x), y).item()
    t.fit([(x, y)] * 30)
    assert nn.functional.cross_entropy(model(x), y).item() < before
    assert (t.policy.scaler is not None) == (precision == "fp16-mixed")
    if precision == "fp16-mixed":
        assert t.state_dict()["scaler"]["scale"] > 0


def test_step_fn_for_dict_batches_and_clear_error_without_it():
    x, y = data(16)
    model = make_model()
    step = lambda m, b: nn.functional.cross_entropy(m(b["x"]), b["y"])  # noqa: E731
    trainer(model, None, step_fn=step).fit([{"x": x, "y": y}])
    with pytest.raises(TypeError, match="step_fn"):
        trainer(make_model(), None).fit([{"x": x, "y": y}])
