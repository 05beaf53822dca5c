"""Every built-in satisfies its extension protocol (``deepseek.protocols``), and a wrong object does not."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import deepseek  # noqa: F401  (registers the built-ins)
import deepseek.train  # noqa: F401
from deepseek import protocols as P
from deepseek import registry as reg
from deepseek.amp.policy import PrecisionPolicy as BuiltinPolicy
from deepseek.data import DistributedDataset
from deepseek.train.sinks import build_sinks


def _positional_arity(fn) -> int:
    return sum(1 for p in inspect.signature(fn).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD)


def assert_same_arity(obj, protocol, names) -> None:
    """``obj``'s methods take as many arguments as the protocol says (isinstance checks names only)."""
    for name in names:
        assert _positional_arity(getattr(obj, name)) == _positional_arity(getattr(protocol, name)) - 1, name


@pytest.mark.parametrize("name", reg.callbacks.names())
def test_builtin_callbacks_implement_callback_hooks_with_their_signatures(name):
    callback = reg.callbacks.build(name)
    hooks = [h for h in P.CALLBACK_HOOKS if callable(getattr(callback, h, None))]
    assert P.is_callback(callback) and hooks
    assert_same_arity(callback, P.Callback, hooks)


def test_an_object_without_hooks_is_no_callback():
    assert not P.is_callback(object()) and not P.is_callback(SimpleNamespace(on_step_end=None))


@pytest.mark.parametrize("name", reg.metrics.names())
def test_builtin_metrics_are_metrics(name):
    metric = reg.metrics.build(name)
    assert isinstance(metric, P.Metric)
    assert_same_arity(metric, P.Metric, ("update", "compute", "reset"))


def test_a_metric_without_reset_is_not_a_metric():
    class Half:
        def update(self, output, target): ...
        def compute(self): ...

    assert not isinstance(Half(), P.Metric) and not isinstance(object(), P.Metric)


@pytest.mark.parametrize("name", reg.losses.names())
def test_builtin_losses_are_losses(name):
    assert isinstance(reg.losses.build(name), P.Loss)


def test_a_non_callable_is_not_a_loss():
    assert not isinstance(1.5, P.Loss) and not isinstance(object(), P.Loss)


def test_the_distributed_dataset_is_a_resumable_loader_and_a_plain_dataloader_is_not():
    data = TensorDataset(torch.arange(8.0), torch.arange(8))
    loader = DistributedDataset(data, 4, rank=0, world_size=1)
    assert isinstance(loader, P.ResumableLoader)
    assert_same_arity(loader, P.ResumableLoader, ("set_epoch", "state_dict", "load_state_dict"))
    assert not isinstance(DataLoader(data, batch_size=4), P.ResumableLoader) and not isinstance([1], P.ResumableLoader)


@pytest.mark.parametrize("name", ["jsonl", "tensorboard", "console"])
def test_builtin_sinks_are_log_sinks(name, tmp_path):
    (sink,) = build_sinks([name], run_dir=tmp_path, progress="off")
    try:
        assert isinstance(sink, P.LogSink)
        assert_same_arity(sink, P.LogSink, ("log", "summary", "close"))
    finally:
        sink.close()
    assert sorted(reg.sinks.names()) == ["console", "jsonl", "tensorboard"]  # every built-in is checked here


def test_an_object_without_close_is_not_a_log_sink():
    assert not isinstance(SimpleNamespace(log=print, summary=print), P.LogSink)


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "fp16-mixed", "progressive"])
def test_builtin_precision_policies_are_precision_policies(precision):
    policy = BuiltinPolicy.create(precision, torch.device("cpu"), nn.Linear(2, 2))
    assert isinstance(policy, P.PrecisionPolicy) and policy.precision == precision
    with policy.autocast():
        pass


def test_a_policy_without_autocast_is_not_a_precision_policy():
    assert not isinstance(SimpleNamespace(precision="fp32", dtype=None, scaler=None), P.PrecisionPolicy)


STRATEGY_METHODS = [name for name in dir(P.Strategy) if not name.startswith("_")]


def test_builtin_strategies_are_strategies():
    pytest.importorskip("deepseek.train.strategy")  # written alongside this module (issue 14)
    assert reg.strategies.names()
    for name in reg.strategies.names():
        strategy = reg.strategies.build(name)
        assert isinstance(strategy, P.Strategy), name
        assert_same_arity(strategy, P.Strategy, STRATEGY_METHODS)


def test_a_module_is_not_a_strategy():
    assert len(STRATEGY_METHODS) == 10
    assert not isinstance(nn.Linear(2, 2), P.Strategy) and not issubclass(nn.Module, P.Strategy)
