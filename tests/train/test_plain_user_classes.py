"""Issue 14's "done when": a user's strategy, sink, callback, metric and loss, each a plain class (no base
class), named by import path in one YAML, work together through ``deepseek train``."""

from __future__ import annotations

import math
import sys

import pytest

from deepseek import registry
from deepseek.cli.main import main
from tests.conftest import write_yaml

USER_CODE = '''
import contextlib

import torch
import torch.nn.functional as F

CALLS = []
RECORDS = []
LOSSES = []


class Strategy:
    def setup(self, model, dist, device):
        CALLS.append("strategy.setup")
        return model
    def no_sync(self, train_model):
        CALLS.append("strategy.no_sync")
        return contextlib.nullcontext()
    def clip_grad_norm(self, model, max_norm):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    def model_state_dict(self, model):
        CALLS.append("strategy.model_state_dict")
        return model.state_dict()
    def load_model_state_dict(self, model, state):
        model.load_state_dict(state, strict=False)
    def optimizer_state_dict(self, model, optimizer):
        return optimizer.state_dict()
    def load_optimizer_state_dict(self, model, optimizer, state):
        optimizer.load_state_dict(state)
    def eval_module(self, model, train_model):
        CALLS.append("strategy.eval_module")
        return model
    def teardown(self, train_model):
        CALLS.append("strategy.teardown")
        return train_model


class Sink:
    def __init__(self, run_dir=None):
        self.run_dir = run_dir
    def log(self, metrics, step):
        RECORDS.append((step, dict(metrics)))
    def summary(self, summary):
        RECORDS.append(("summary", dict(summary)))
    def close(self):
        CALLS.append("sink.close")


class Callback:
    def on_step_start(self, trainer):
        CALLS.append("callback.on_step_start")
    def on_before_optimizer_step(self, trainer, optimizer):
        CALLS.append("callback.on_before_optimizer_step")


class SeenSamples:
    """A metric: the number of validation samples it was given (logged as val/seen)."""
    name = "seen"
    def __init__(self, factor: float = 1.0):
        self.factor, self.count = factor, 0
    def reset(self):
        self.count = 0
    def update(self, output, target):
        self.count += int(target.shape[0])
    def compute(self):
        return self.count * self.factor


class OffsetLoss:
    """Cross-entropy plus a constant offset: the logged loss shows that this class computed it."""
    def __init__(self, offset: float = 0.0):
        self.offset = offset
    def __call__(self, outputs, targets):
        loss = F.cross_entropy(outputs, targets) + self.offset
        LOSSES.append(float(loss.detach()))
        return loss
'''


@pytest.fixture
def plain_mod(tmp_path, monkeypatch):
    """``plain_user_mod``, importable only for this test."""
    (tmp_path / "plain_user_mod.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "plain_user_mod", raising=False)
    yield
    sys.modules.pop("plain_user_mod", None)


def test_a_plain_loss_class_is_accepted_by_import_path_and_a_class_without_call_is_not(plain_mod):
    loss = registry.losses.build("plain_user_mod:OffsetLoss", offset=2.0)
    assert type(loss).__name__ == "OffsetLoss" and callable(loss)
    says = r"^'plain_user_mod:SeenSamples' is not a subclass of torch\.nn\.Module nor a class whose instances"
    with pytest.raises(registry.RegistryError, match=says):
        registry.losses.get("plain_user_mod:SeenSamples")  # a metric: its instances are not callable
    with pytest.raises(registry.RegistryError, match="standard-library"):
        registry.losses.get("fractions:Fraction")  # a callable class, but the standard library's


def test_a_users_plain_strategy_sink_callback_metric_and_loss_work_together_through_deepseek_train(tmp_path, plain_mod):
    cfg = write_yaml(tmp_path / "run.yaml", {
        "model": {"name": "mlp", "in_features": 32, "hidden": [8], "num_classes": 4},
        "data": {"name": "synthetic", "num_samples": 64, "val_fraction": 0.25, "batch_size": 8},
        "train": {
            "max_steps": 4, "accumulate_grad_batches": 2, "device": "cpu", "val_every_steps": 2,
            "val_every_epochs": None, "strategy": "plain_user_mod:Strategy",
            "loss": {"name": "plain_user_mod:OffsetLoss", "offset": 100.0},
            "metrics": [{"name": "plain_user_mod:SeenSamples", "factor": 2.0}],
        },
        "callbacks": ["plain_user_mod:Callback"],
        "logging": {"progress": "off", "tensorboard": False, "every_steps": 1, "sinks": ["plain_user_mod:Sink"]},
        "checkpoint": {"every_minutes": None, "save_best": False},
    })  # fmt: skip
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    mod = sys.modules["plain_user_mod"]
    calls = mod.CALLS
    # the strategy: set up and torn down once, no_sync on each window's first micro-step, final weights saved
    assert calls.count("strategy.setup") == calls.count("strategy.teardown") == 1
    assert calls.count("strategy.no_sync") == 4 and "strategy.eval_module" in calls
    assert "strategy.model_state_dict" in calls
    # the callback: once per optimizer step each
    assert calls.count("callback.on_step_start") == calls.count("callback.on_before_optimizer_step") == 4
    assert calls.count("sink.close") == 1
    # the sink got the metric the metric class produced: 16 validation samples, times its factor 2
    val = [metrics for step, metrics in mod.RECORDS if step != "summary" and "val/seen" in metrics]
    assert [m["val/seen"] for m in val] == [32.0, 32.0]
    # the loss logged is the plain loss's own (cross-entropy + 100), in training and in validation
    train = [metrics["train/loss"] for step, metrics in mod.RECORDS if step != "summary" and "train/loss" in metrics]
    assert len(train) == 4 and all(100.0 < v < 100.0 + math.log(4) * 3 for v in train)
    assert all(100.0 < m["val/loss"] < 110.0 for m in val)
    assert len(mod.LOSSES) == 4 * 2 + 2 * 2  # 2 micro-batches per step, 2 validation batches per validation
    assert [r for r in mod.RECORDS if r[0] == "summary"]
