"""Duck-typed callbacks and the built-in ones.

A callback is any object with some of these methods (all optional, all get the Trainer first):
``on_train_start(trainer)``, ``on_epoch_start(trainer)``, ``on_step_end(trainer)``,
``on_epoch_end(trainer)``, ``on_validation_end(trainer, metrics)``,
``on_checkpoint(trainer, path)``, ``on_train_end(trainer)``. One with ``state_dict()`` and
``load_state_dict(state)`` has its state saved in checkpoints and restored on resume.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from deepseek.protocols import CALLBACK_HOOKS
from deepseek.registry import register_callback

HOOKS = CALLBACK_HOOKS  # the hooks the Trainer calls, named once in deepseek.protocols


class CallbackList:
    """Pre-bound hook lists, so a hook no callback implements costs one empty loop per call."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.callbacks = list(callbacks)
        self.hooks: dict[str, list[Callable[..., Any]]] = {
            h: [getattr(cb, h) for cb in self.callbacks if callable(getattr(cb, h, None))] for h in HOOKS
        }

    def __call__(self, hook: str, *args: Any) -> None:
        for fn in self.hooks[hook]:
            fn(*args)

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
