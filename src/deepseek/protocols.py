"""The extension contracts, as ``typing.Protocol`` classes: what a plain class must have to be used.

Nothing here needs to be inherited: the framework checks the shape, not the base class (a transform,
a metric or a sink is any object with the right methods). The runtime-checkable ones work with
``isinstance``; :class:`Callback` is a static contract only, because every hook is optional (use
:func:`is_callback` at run time).

This module imports nothing from the framework, so every layer may use it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

# The hooks the Trainer calls on callbacks, each with the Trainer first.
CALLBACK_HOOKS = (
    "on_train_start",
    "on_epoch_start",
    "on_step_start",
    "on_before_optimizer_step",
    "on_step_end",
    "on_epoch_end",
    "on_validation_end",
    "on_save_checkpoint",
    "on_checkpoint",
    "on_load_checkpoint",
    "on_exception",
    "on_train_end",
)


class Callback(Protocol):
    """Training hooks; a callback implements any subset (the Trainer binds only those that exist, so
    a hook no callback implements costs nothing). With ``state_dict()`` / ``load_state_dict(state)``
    its state is saved in checkpoints and restored on resume; ``on_save_checkpoint(trainer, state)`` may also
    add entries to the checkpoint's ``state`` dict (tensors, numbers, strings, lists and dicts of them: it is
    read back with ``weights_only=True``), which ``on_load_checkpoint(trainer, state)`` gets on resume.

    ``on_step_start`` runs before an optimizer step's first micro-batch; ``on_before_optimizer_step`` once
    per optimizer step, with the gradients present, unscaled by the loss scaler and not yet clipped;
    ``on_exception`` when ``fit()`` fails (the exception then propagates unchanged)."""

    def on_train_start(self, trainer: Any) -> None: ...
    def on_epoch_start(self, trainer: Any) -> None: ...
    def on_step_start(self, trainer: Any) -> None: ...
    def on_before_optimizer_step(self, trainer: Any, optimizer: torch.optim.Optimizer) -> None: ...
    def on_step_end(self, trainer: Any) -> None: ...
    def on_epoch_end(self, trainer: Any) -> None: ...
    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_save_checkpoint(self, trainer: Any, state: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer: Any, path: Any) -> None: ...
    def on_load_checkpoint(self, trainer: Any, state: dict[str, Any]) -> None: ...
    def on_exception(self, trainer: Any, exc: BaseException) -> None: ...
    def on_train_end(self, trainer: Any) -> None: ...


def is_callback(obj: Any) -> bool:
    """Whether ``obj`` implements at least one :class:`Callback` hook (a class or an instance)."""
    return any(callable(getattr(obj, hook, None)) for hook in CALLBACK_HOOKS)


@runtime_checkable
class Metric(Protocol):
    """Accumulates over validation batches. ``update(output, target)`` takes one batch's model output
    and targets (e.g. logits ``(N, C)`` and classes ``(N,)``); ``compute()`` gives the value over all
    batches since ``reset()``. Optional: ``name`` (logged as ``val/<name>``) and a ``state`` tensor of
    sums, all-reduced across ranks before ``compute()``."""

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None: ...
    def compute(self) -> float: ...
    def reset(self) -> None: ...


@runtime_checkable
class Loss(Protocol):
    """``loss(output, target) -> scalar tensor``: a function, an ``nn.Module``, or an instance of a plain
    class with ``__call__`` (by import path too), e.g. logits ``(N, C)`` and class indices ``(N,)`` to a
    0-d tensor."""

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class ResumableLoader(Protocol):
    """An iterable of batches that can be resumed exactly: ``set_epoch(epoch)`` before each epoch
    reshuffles deterministically; ``state_dict()`` is saved in checkpoints and ``load_state_dict``
    restores the order (the Trainer records the position within the epoch itself)."""

    def __iter__(self) -> Iterator[Any]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class LogSink(Protocol):
    """Where metric records and the run summary go (``logging.sinks``).

    ``log(metrics, step)``: one record at optimizer step ``step``; ``metrics`` is ``{"epoch": int,
    **values}`` with ``train/loss``, ``lr``, ``samples_per_s``... on training records and ``val/<name>``
    on validation records. ``summary(summary)``: once, at the end, the dict ``fit()`` returns (as in
    ``summary.json``). ``close()``: release files; called once when ``fit()`` ends, also after an error.
    Optional: ``log_stats(record, step)`` receives ``logging.stats`` records (one per rank and recording step,
    as in ``stats.jsonl``; see ``deepseek.train.stats``); sinks without it are skipped. Only the main rank logs."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...
    def summary(self, summary: Mapping[str, Any]) -> None: ...
    def close(self) -> None: ...


@runtime_checkable
class Strategy(Protocol):
    """How a model is distributed (single process, DDP, FSDP/ZeRO, and later tensor parallel).

    ``setup(model, dist, device)`` returns the module to train (``model`` itself, or wrapped for
    gradient sync; ``dist`` is the run's ``DistInfo``); ``no_sync(train_model)`` is the context for
    micro-steps that must skip gradient sync; ``clip_grad_norm(model, max_norm)`` clips and returns the
    total norm before clipping (a scalar tensor); the state-dict methods give and take what a checkpoint
    stores; ``eval_module(model, train_model)`` is the module validation runs; ``teardown(train_model)``
    undoes ``setup`` and returns the bare model. ``setup_optimizer(optimizer, model)``, called once after
    ``setup``, returns the optimizer to train with (re-pointed at sharded parameters, or wrapped, as
    ZeRO-1 does); the Trainer treats it as optional, so a user's strategy may leave it out."""

    def setup(self, model: nn.Module, dist: Any, device: torch.device) -> nn.Module: ...
    def setup_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer: ...
    def no_sync(self, train_model: nn.Module) -> AbstractContextManager[Any]: ...
    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor: ...
    def model_state_dict(self, model: nn.Module) -> dict[str, Any]: ...
    def load_model_state_dict(self, model: nn.Module, state: Mapping[str, Any]) -> None: ...
    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]: ...
    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None: ...
    def eval_module(self, model: nn.Module, train_model: nn.Module) -> nn.Module: ...
    def teardown(self, train_model: nn.Module) -> nn.Module: ...


@runtime_checkable
class PrecisionPolicy(Protocol):
    """The numeric precision of a run: ``precision`` names it (``fp32``, ``bf16-mixed``...), ``dtype`` is
    the autocast dtype or None for fp32, ``scaler`` the loss scaler (a ``torch.amp.GradScaler``) or None,
    and ``autocast()`` the context the forward pass runs in."""

    precision: str
    dtype: torch.dtype | None
    scaler: Any

    def autocast(self) -> AbstractContextManager[Any]: ...
