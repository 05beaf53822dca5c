"""The Strategy seam: how a model is distributed is one object the Trainer calls, never DDP by name.

Conformance of the two built-ins (SingleDevice; DDP on a one-rank gloo group in this process), the
Trainer's choice of strategy, and a user's plain class named by import path in a YAML run through
``deepseek train``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

import deepseek as ds
from deepseek.registry import RegistryError
from deepseek.train.distributed import DistInfo
from deepseek.train.strategy import DDP, SingleDevice, build_strategy
from tests.conftest import write_yaml

SRC = Path(__file__).resolve().parents[2] / "src" / "deepseek" / "train"
CPU = torch.device("cpu")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))




def _conforms(strategy, info: DistInfo) -> nn.Module:
    """The calls the Trainer makes, in its order; returns what ``setup`` wrapped the model in."""
    model, other = _model(), _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    train_model = strategy.setup(model, info, CPU)
    with strategy.no_sync(train_model):
        train_model(torch.randn(3, 4)).sum().backward()
    train_model(torch.randn(3, 4)).sum().backward()
    norm = strategy.clip_grad_norm(model, 1e-3)
    assert norm.ndim == 0 and norm > 1e-3
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total == pytest.approx(1e-3, rel=1e-3)  # clipped in place
    opt.step()
    assert strategy.eval_module(model, train_model) is model
    state = strategy.model_state_dict(model)
    assert set(state) == set(model.state_dict())  # bare names, no "module." prefix
    strategy.load_model_state_dict(other, state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    opt_state = strategy.optimizer_state_dict(model, opt)
    strategy.load_optimizer_state_dict(model, opt, opt_state)
    assert strategy.teardown(train_model) is model
    return train_model


def test_single_device_conforms():
    strategy = SingleDevice()
    assert _conforms(strategy, DistInfo()) is not None
    assert strategy.setup(_model(), DistInfo(), CPU).__class__ is nn.Sequential  # no wrapper


def test_ddp_conforms_on_a_one_rank_gloo_group(one_rank_group):
    strategy = DDP(find_unused_parameters=False, gradient_as_bucket_view=True)
    wrapped = _conforms(strategy, one_rank_group)
    assert isinstance(wrapped, DistributedDataParallel)
    assert wrapped.gradient_as_bucket_view and not wrapped.find_unused_parameters  # kwargs reach DDP


def test_ddp_without_a_process_group_says_how_to_get_one():
    with pytest.raises(ValueError, match=r"train\.strategy: 'ddp' needs a process group.*torchrun"):
        DDP().setup(_model(), DistInfo(), CPU)


def test_auto_picks_ddp_only_in_a_world_of_several():
    assert isinstance(build_strategy("auto", DistInfo()), SingleDevice)
    assert isinstance(build_strategy(None, DistInfo()), SingleDevice)
    assert isinstance(build_strategy("auto", DistInfo(world_size=2)), DDP)
    built = build_strategy({"name": "ddp", "static_graph": True}, DistInfo())
    assert isinstance(built, DDP) and built.kwargs == {"static_graph": True}
    mine = SingleDevice()
    assert build_strategy(mine, DistInfo()) is mine


def test_an_unknown_strategy_name_is_one_line_with_what_exists():
    with pytest.raises(RegistryError, match=r"unknown strategy 'dpp'; did you mean 'ddp'"):
        build_strategy("dpp", DistInfo())
    with pytest.raises(ValueError, match=r"train\.strategy: 'auto' takes no arguments"):
        build_strategy({"name": "auto", "static_graph": True}, DistInfo())


def test_trainer_source_names_no_ddp():
    """DDP-specific code lives in the DDP strategy only (issue 14's done-when)."""
    for name in ("trainer.py", "step.py", "trainer_state.py", "trainer_validation.py"):
        text = (SRC / name).read_text()
        assert not re.search(r"DistributedDataParallel|no_sync\(\)|_unwrap_ddp|device_ids", text), name


class Counting:
    """A plain user strategy (no base class): single-process training that records each call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def setup(self, model, dist, device):
        self.calls.append("setup")
        return model

    def no_sync(self, train_model):
        self.calls.append("no_sync")
        return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)  # any context manager

    def clip_grad_norm(self, model, max_norm):
        self.calls.append("clip_grad_norm")
        return nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def model_state_dict(self, model):
        self.calls.append("model_state_dict")
        return model.state_dict()

    def load_model_state_dict(self, model, state):
        self.calls.append("load_model_state_dict")
        model.load_state_dict(state, strict=False)

    def optimizer_state_dict(self, model, optimizer):
        self.calls.append("optimizer_state_dict")
        return optimizer.state_dict()

    def load_optimizer_state_dict(self, model, optimizer, state):
        self.calls.append("load_optimizer_state_dict")
        optimizer.load_state_dict(state)

    def eval_module(self, model, train_model):
        self.calls.append("eval_module")
        return model

    def teardown(self, train_model):
        self.calls.append("teardown")
        return train_model


def test_trainer_takes_a_strategy_instance(tmp_path):
    data = [(torch.randn(6, 4), torch.randint(0, 2, (6,))) for _ in range(4)]
    strategy = Counting()
    trainer = ds.Trainer(
        _model(), max_steps=2, accumulate_grad_batches=2, grad_clip_norm=1.0, strategy=strategy,
        run_dir=tmp_path / "run", checkpoint_every_minutes=None, tensorboard=False, progress="off",
    )  # fmt: skip
    trainer.fit(data, data[:1])
    assert strategy.calls.count("setup") == strategy.calls.count("teardown") == 1
    assert strategy.calls.count("no_sync") == 2  # the first of each window's two micro-steps
    assert strategy.calls.count("clip_grad_norm") == 2
    assert "eval_module" in strategy.calls and "model_state_dict" in strategy.calls
    trainer2 = ds.Trainer(_model(), max_steps=3, strategy=Counting(), run_dir=tmp_path / "run",
                          checkpoint_every_minutes=None, tensorboard=False, progress="off")  # fmt: skip
    trainer2.fit(data, resume="auto")
    assert {"load_model_state_dict", "load_optimizer_state_dict"} <= set(trainer2.strategy.calls)
    assert trainer2.global_step == 3


USER_STRATEGY = """
CALLS = []

class CountingStrategy:
    '''Records setup, no_sync and teardown; otherwise single-process training.'''
    def __init__(self, label: str = ""):
        self.label = label
    def setup(self, model, dist, device):
        CALLS.append(("setup", self.label))
        return model
    def no_sync(self, train_model):
        import contextlib
        CALLS.append(("no_sync", self.label))
        return contextlib.nullcontext()
    def clip_grad_norm(self, model, max_norm):
        import torch
        return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    def model_state_dict(self, model):
        return model.state_dict()
    def load_model_state_dict(self, model, state):
        model.load_state_dict(state, strict=False)
    def optimizer_state_dict(self, model, optimizer):
        return optimizer.state_dict()
    def load_optimizer_state_dict(self, model, optimizer, state):
        optimizer.load_state_dict(state)
    def eval_module(self, model, train_model):
        return model
    def teardown(self, train_model):
        CALLS.append(("teardown", self.label))
        return train_model
"""


def _config(tmp_path: Path, strategy) -> Path:
    return write_yaml(tmp_path / "run.yaml", {
        "model": {"name": "mlp", "in_features": 32, "hidden": [8], "num_classes": 4},
        "data": {"name": "synthetic", "num_samples": 64, "val_fraction": 0.25, "batch_size": 8},
        "train": {"max_steps": 3, "accumulate_grad_batches": 2, "device": "cpu", "strategy": strategy},
        "logging": {"progress": "off", "tensorboard": False},
        "checkpoint": {"every_minutes": None},
    })  # fmt: skip


def test_a_user_strategy_by_import_path_in_yaml_runs_through_deepseek_train(tmp_path, monkeypatch):
    from deepseek.cli.main import main

    (tmp_path / "user_strategy_mod.py").write_text(USER_STRATEGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_strategy_mod", raising=False)
    cfg = _config(tmp_path, {"name": "user_strategy_mod:CountingStrategy", "label": "mine"})
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 0
    calls = sys.modules["user_strategy_mod"].CALLS
    assert calls.count(("setup", "mine")) == calls.count(("teardown", "mine")) == 1
    assert calls.count(("no_sync", "mine")) == 3  # one per optimizer step: the window's first micro-step


@pytest.mark.parametrize(
    ("strategy", "says"),
    [
        ("dpp", "train.strategy: unknown strategy 'dpp'; did you mean 'ddp'"),
        ({"name": "ddp", "find_unused_parameter": True}, "train.strategy: ddp has no argument 'find_unused_parameter'"),
    ],
)
def test_a_wrong_strategy_in_yaml_exits_2_before_training(tmp_path, capsys, strategy, says):
    from deepseek.cli.main import main

    cfg = _config(tmp_path, strategy)
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()


class MarkingFinal(Counting):
    """Records calls with the Trainer's phase; its model state for saving has a marker in the last bias, so
    weights written through ``model_state_dict`` can be told from the model's own."""

    def model_state_dict(self, model):
        self.calls.append("model_state_dict")
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["2.bias"].fill_(123.0)
        return state


def test_setup_runs_before_a_resumed_checkpoint_loads_and_final_weights_come_from_the_strategy(tmp_path):
    from safetensors.torch import load_file

    data = [(torch.randn(6, 4), torch.randint(0, 2, (6,))) for _ in range(3)]
    run = tmp_path / "run"
    kwargs = {"run_dir": run, "checkpoint_every_minutes": None, "tensorboard": False, "progress": "off"}
    ds.Trainer(_model(), max_steps=2, strategy=Counting(), **kwargs).fit(data)
    strategy = MarkingFinal()
    model = _model()
    ds.Trainer(model, max_steps=3, strategy=strategy, **kwargs).fit(data, resume="auto")
    calls = strategy.calls
    assert calls.index("setup") < calls.index("load_model_state_dict") < calls.index("load_optimizer_state_dict")
    final = load_file(run / "final" / "model.safetensors")
    assert torch.equal(final["2.bias"], torch.full_like(final["2.bias"], 123.0))  # through model_state_dict
    assert not torch.equal(model.state_dict()["2.bias"], final["2.bias"])
    assert torch.equal(final["0.weight"], model.state_dict()["0.weight"])
