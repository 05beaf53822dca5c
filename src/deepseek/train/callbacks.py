"""Duck-typed callbacks and the built-in ones.

A callback is any object with some of these methods (all optional, all get the Trainer first):

- ``on_train_start(trainer)``, ``on_epoch_start(trainer)``;
- ``on_step_start(trainer)``: before the first micro-batch of an optimizer step;
- ``on_before_optimizer_step(trainer, optimizer)``: once per optimizer step, with the gradients present,
  already unscaled by the loss scaler (fp16-mixed) and not yet clipped (a step skipped for a nan/inf
  loss has none; a ``deepseek.optim.MixedPrecision`` optimizer unscales its own gradients later);
- ``on_step_end(trainer)``, ``on_epoch_end(trainer)``, ``on_validation_end(trainer, metrics)``;
- ``on_save_checkpoint(trainer, state)``: may add entries to the dict a checkpoint's ``state.pt`` is
  written from (tensors, numbers, strings, lists and dicts of them: it is read with ``weights_only=True``;
  called on the main rank, which writes checkpoints); ``on_load_checkpoint(trainer, state)`` gets that
  dict back on every rank when a run resumes from the checkpoint;
- ``on_checkpoint(trainer, path)`` after a checkpoint is written;
- ``on_exception(trainer, exc)`` when ``fit()`` fails; the exception then propagates unchanged;
- ``on_train_end(trainer)``.

One with ``state_dict()`` and ``load_state_dict(state)`` has its state saved in checkpoints and
restored on resume, too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from deepseek.protocols import CALLBACK_HOOKS
from deepseek.registry import register_callback

HOOKS = CALLBACK_HOOKS  # the hooks the Trainer calls, named once in deepseek.protocols


class CallbackList:
    """Pre-bound hook lists: ``callbacks.on_step_start`` is the list of bound methods implementing that
    hook (empty when none does), so the hot path guards a call with ``if callbacks.on_step_start:`` and a
    hook no callback implements costs one truth test, no lookup."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = list(callbacks)
        self.hooks: dict[str, list[Callable[..., Any]]] = {
            h: [getattr(cb, h) for cb in self.callbacks if callable(getattr(cb, h, None))] for h in HOOKS
        }
        for hook, bound in self.hooks.items():  # the same lists, as attributes
            setattr(self, hook, bound)

    def __call__(self, hook: str, *args: Any) -> None:
        for fn in self.hooks[hook]:
            fn(*args)

    def bind(self, hook: str, trainer: Any) -> Callable[..., None] | None:
        """``hook`` of every callback as one function of the hook's other arguments, the Trainer bound first;
        None when no callback implements it, so that the caller tests one attribute and calls nothing."""
        bound = self.hooks[hook]
        if not bound:
            return None

        def call(*args: Any) -> None:
            for fn in bound:
                fn(trainer, *args)

        return call

    def state_dict(self) -> dict[str, Any]:
        return {
            f"{i}:{type(cb).__name__}": cb.state_dict()
            for i, cb in enumerate(self.callbacks)
            if callable(getattr(cb, "state_dict", None))
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, cb in enumerate(self.callbacks):
            key = f"{i}:{type(cb).__name__}"
            if key in state and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(state[key])


class Monitor:
    """Tracks the best value of one metric; ``improved(value)`` says whether it beat the best."""

    def __init__(self, monitor: str, mode: str = "min", min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best = math.inf if mode == "min" else -math.inf

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best = value
        return better

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])


@register_callback("early_stopping")
class EarlyStopping:
    """Stop training when ``monitor`` has not improved for ``patience`` validations."""

    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int = 3, min_delta: float = 0.0) -> None:
        self.tracker = Monitor(monitor, mode, min_delta)
        self.patience = patience
        self.bad = 0

    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if self.tracker.monitor not in metrics:
            raise KeyError(f"early stopping monitors '{self.tracker.monitor}', but validation gave {sorted(metrics)}")
        if self.tracker.improved(metrics[self.tracker.monitor]):
            self.bad = 0
            return
        self.bad += 1
        if self.bad >= self.patience:
            trainer.should_stop = True
            trainer.stop_reason = f"early stopping: {self.tracker.monitor} did not improve for {self.bad} validations"

    def state_dict(self) -> dict[str, Any]:
        return {"bad": self.bad, **self.tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad = int(state["bad"])
        self.tracker.load_state_dict(state)
