"""The callback hooks the profiler, visualizer and search need, through a real ``Trainer.fit`` on a tiny model:
``on_step_start``, ``on_before_optimizer_step``, ``on_exception``, ``on_save_checkpoint`` / ``on_load_checkpoint``."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from deepseek.protocols import CALLBACK_HOOKS, Callback
from deepseek.train import callbacks as callbacks_module
from deepseek.train.callbacks import CallbackList

NEW_HOOKS = ("on_step_start", "on_before_optimizer_step", "on_exception", "on_save_checkpoint", "on_load_checkpoint")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _data(n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 4, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def _trainer(model: nn.Module, callbacks, **kwargs) -> ds.Trainer:
    kwargs = {"max_steps": 2, "progress": "off", "tensorboard": False, "checkpoint_every_minutes": None, **kwargs}
    return ds.Trainer(model, callbacks=callbacks, **kwargs)


def _grad_norm(model: nn.Module) -> float:
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads), "a gradient is missing in on_before_optimizer_step"
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


class Recorder:
    """Records every hook it sees, plus each forward pass of the model (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.events: list[tuple[str, int]] = []
        self.norms: list[float] = []
        self.clip_norms: list[float] = []
        self.model = model
        model.register_forward_pre_hook(lambda *_: self.events.append(("forward", -1)))

    def on_train_start(self, trainer):
        self.events.append(("on_train_start", trainer.global_step))

    def on_step_start(self, trainer):
        self.events.append(("on_step_start", trainer.global_step))

    def on_before_optimizer_step(self, trainer, optimizer):
        assert optimizer is trainer.optimizer
        self.norms.append(_grad_norm(self.model))
        self.events.append(("on_before_optimizer_step", trainer.global_step))

    def on_step_end(self, trainer):
        if trainer._step.grad_norm is not None:
            self.clip_norms.append(float(trainer._step.grad_norm))
        self.events.append(("on_step_end", trainer.global_step))

    def on_train_end(self, trainer):
        self.events.append(("on_train_end", trainer.global_step))


def test_the_new_hooks_are_named_once_in_protocols():
    assert set(NEW_HOOKS) <= set(CALLBACK_HOOKS)
    for hook in NEW_HOOKS:
        assert callable(getattr(Callback, hook, None)), hook
        assert hook in (CallbackList.__doc__ or "") + (callbacks_module.__doc__ or ""), hook


def test_hooks_run_in_order_around_each_optimizer_step_under_accumulation():
    model = _model()
    rec = Recorder(model)
    trainer = _trainer(model, [rec], max_steps=2, accumulate_grad_batches=3)
    trainer.fit(_data(6))
    names = [name for name, _ in rec.events]
    step = ["on_step_start", "forward", "forward", "forward", "on_before_optimizer_step", "on_step_end"]
    assert names == ["on_train_start", *step, *step, "on_train_end"]
    # the step counter has not moved yet when the step starts and when the optimizer is about to step
    assert [s for n, s in rec.events if n in ("on_step_start", "on_before_optimizer_step")] == [0, 0, 1, 1]


def test_before_optimizer_step_sees_the_gradients_before_clipping():
    model = _model()
    rec = Recorder(model)
    _trainer(model, [rec], max_steps=3, grad_clip_norm=1e-4).fit(_data(3))
    assert len(rec.norms) == 3
    assert all(n > 1e-3 for n in rec.norms)  # unclipped: far above the clip norm
    assert rec.norms == pytest.approx(rec.clip_norms, rel=1e-5)  # the very norm clipping then measured


def test_before_optimizer_step_sees_gradients_the_loss_scaler_unscaled():
    model = _model()
    rec = Recorder(model)
    trainer = _trainer(model, [rec], max_steps=2, precision="fp16-mixed", grad_clip_norm=1e-4, device="cpu")
    trainer.fit(_data(2))
    assert trainer.policy.scaler is not None and trainer.policy.scaler.get_scale() > 1.0
    assert len(rec.norms) == 2
    assert rec.norms == pytest.approx(rec.clip_norms, rel=1e-3)  # not multiplied by the loss scale


def test_before_optimizer_step_is_skipped_with_the_step_when_the_loss_is_not_finite():
    model = _model()
    rec = Recorder(model)
    calls = {"n": 0}

    def step_fn(m, batch):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(m(batch[0]), batch[1])
        return loss * float("nan") if calls["n"] == 2 else loss

    _trainer(model, [rec], max_steps=3, step_fn=step_fn, on_nonfinite="skip").fit(_data(3))
    names = [name for name, _ in rec.events]
    assert names.count("on_step_start") == 3 and names.count("on_before_optimizer_step") == 2


def test_on_exception_gets_the_exception_and_fit_raises_it_unchanged():
    seen = []

    class Watcher:
        def on_exception(self, trainer, exc):
            seen.append((trainer.global_step, exc))

    boom = ValueError("boom at the third step")
    calls = {"n": 0}

    def step_fn(m, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise boom
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    with pytest.raises(ValueError) as info:
        _trainer(_model(), [Watcher()], max_steps=5, step_fn=step_fn).fit(_data(5))
    assert info.value is boom
    assert seen == [(2, boom)]


def test_a_fit_that_succeeds_calls_no_on_exception():
    seen = []

    class Watcher:
        def on_exception(self, trainer, exc):
            seen.append(exc)

    _trainer(_model(), [Watcher()]).fit(_data(2))
    assert seen == []


class Carrier:
    """Carries a counter and a tensor into checkpoints through on_save_checkpoint / on_load_checkpoint, and
    another counter through the older state_dict() / load_state_dict()."""

    def __init__(self) -> None:
        self.steps, self.loaded, self.old_style = 0, None, 0

    def on_step_end(self, trainer):
        self.steps += 1
        self.old_style += 10

    def on_save_checkpoint(self, trainer, state):
        state["carrier"] = {"steps": self.steps, "history": torch.arange(self.steps, dtype=torch.float32)}

    def on_load_checkpoint(self, trainer, state):
        self.loaded = state["carrier"]
        self.steps = int(state["carrier"]["steps"])

    def state_dict(self):
        return {"old_style": self.old_style}

    def load_state_dict(self, state):
        self.old_style = int(state["old_style"])


def test_callbacks_carry_state_into_checkpoints_and_get_it_back_on_resume(tmp_path):
    run = tmp_path / "run"
    first = Carrier()
    _trainer(_model(), [first], max_steps=2, run_dir=run, checkpoint_every_steps=1).fit(_data(4))
    saved = torch.load(run / "checkpoints" / "step-00000002" / "state.pt", weights_only=True)
    assert saved["carrier"]["steps"] == 2  # survives the state.pt format, read back with weights_only

    second = Carrier()
    resumed = _trainer(_model(), [second], max_steps=3, run_dir=run, checkpoint_every_steps=1)
    resumed.fit(_data(4), resume="auto")
    assert second.loaded is not None and second.loaded["steps"] == 2
    assert torch.equal(second.loaded["history"], torch.arange(2, dtype=torch.float32))
    assert second.steps == 3 and second.old_style == 30  # both mechanisms carried the state across
    assert resumed.global_step == 3


def test_hooks_no_callback_implements_are_empty_pre_bound_lists():
    class OnlyStepEnd:
        def on_step_end(self, trainer): ...

    cbs = CallbackList([OnlyStepEnd()])
    for hook in CALLBACK_HOOKS:
        assert isinstance(getattr(cbs, hook), list)
        assert len(getattr(cbs, hook)) == (1 if hook == "on_step_end" else 0)
    trainer = _trainer(_model(), [OnlyStepEnd()], max_steps=1)
    trainer.fit(_data(1))
    assert trainer._step.before_optimizer_step is None  # the hot path tests one attribute, calls nothing


def test_an_entry_a_resume_could_not_load_is_refused_when_it_is_saved(tmp_path):
    class Unloadable:  # a plain object: torch.load(weights_only=True) refuses it
        pass

    class Adds:
        def on_save_checkpoint(self, trainer, state):
            state["mine"] = {"obj": Unloadable()}

    with pytest.raises(TypeError, match=r"on_save_checkpoint added 'mine' of type dict.*weights_only=True"):
        _trainer(_model(), [Adds()], run_dir=tmp_path / "run", checkpoint_every_steps=1).fit(_data(4))
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))  # nothing a resume would trip over
