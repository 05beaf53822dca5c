"""Strategies: how a model is distributed, as one object the Trainer calls (``train.strategy``).

A strategy wraps the model for training, gives the context that skips gradient sync on an accumulation
window's non-final micro-steps, clips gradients, turns the model's and optimizer's state into what a
checkpoint holds (and back), names the module validation runs, and unwraps the model at the end. The
Trainer calls these and nothing else, so FSDP, tensor or pipeline parallelism are new strategies, not
new Trainer code. Built in: ``single_device`` (alias ``single``), ``ddp`` and ``fsdp`` (ZeRO-1/2/3 and
HSDP, :mod:`deepseek.train.fsdp`); ``auto`` (the default) is ``ddp`` in a process group of several ranks,
else ``single_device``. A strategy of one's own is any class
with these methods (no base class needed), named in a config by import path::

    train:
      strategy: {name: my_pkg.parallel:MyStrategy, some_kwarg: 1}

The calls, in the Trainer's order: ``setup`` (after the model is on its device, EMA copied and
compiled, and BEFORE a resumed checkpoint is loaded: a sharding strategy wraps first, then takes its
sharded state through ``load_model_state_dict`` / ``load_optimizer_state_dict``), then the optional
``setup_optimizer(optimizer, model)`` (the optimizer to train with: the Trainer's own, re-pointed at
sharded parameters or wrapped, e.g. by ZeRO-1; the scheduler is built on what it returns), then per step
``no_sync`` (only when a window has several micro-batches or ranks) and ``clip_grad_norm`` (only with
``grad_clip_norm``), ``eval_module`` per validation, the state-dict methods per checkpoint save or load
(``model_state_dict`` also gives the ``final/`` weights), and ``teardown`` once when ``fit()`` ends.

A strategy whose state-dict methods are collectives (a sharded model's full state is gathered from
every rank) sets ``collective_state_dict = True``: then every rank calls them for each checkpoint and
for ``final/``, and only rank 0 writes; it may return ``{}`` on the other ranks.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from deepseek.registry import RegistryError, register_strategy, strategies
from deepseek.train.comm import (
    check_comm_spec,
    comm_has_state,
    comm_values,
    gather_comm_state,
    install_comm_hook,
    load_comm_state,
)
from deepseek.train.distributed import DistInfo

AUTO = "auto"


@register_strategy("single_device", aliases=("single",))
class SingleDevice:
    """One process, one device: the model trains as it is, with no wrapper and no gradient sync."""

    def setup(self, model: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
        """The module to train: ``model`` itself."""
        if dist.enabled:  # each rank would train alone and the ranks would drift apart silently
            raise ValueError(
                f"train.strategy: 'single_device' cannot train on {dist.world_size} ranks; use 'ddp' or 'auto'"
            )
        return model

    def setup_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer to train with, called once after :meth:`setup`: ``optimizer`` itself here."""
        return optimizer

    def no_sync(self, train_model: nn.Module) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip all gradients to a total 2-norm of ``max_norm``; returns the norm before clipping (a scalar)."""
        return nn.utils.clip_grad_norm_(model.parameters(), max_norm)

    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        return model.state_dict()

    def load_model_state_dict(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        """Load ``state``; it may lack the names of tied (shared) tensors, which loading their twin fills,
        so missing keys are left to the caller to judge (the checkpoint loader does)."""
        model.load_state_dict(state, strict=False)

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        optimizer.load_state_dict(state)

    def eval_module(self, model: nn.Module, train_model: nn.Module) -> nn.Module:
        """What validation runs: the bare model (each rank scores its own shard; the metrics are reduced)."""
        return model

    def teardown(self, train_model: nn.Module) -> nn.Module:
        """The bare model back from what :meth:`setup` returned."""
        return train_model


_SET_BY_DDP_STRATEGY = {"self", "module", "device_ids", "output_device"}  # from the Trainer's device


@register_strategy("ddp")
class DDP(SingleDevice):
    """``torch.nn.parallel.DistributedDataParallel`` over the default process group.

    ``kwargs`` go to DDP as they are (``find_unused_parameters``, ``gradient_as_bucket_view``,
    ``static_graph``, ``bucket_cap_mb``, ...). On CUDA each rank's module sits on its own device.
    ``comm`` (``parallel.comm``'s keys: topology, ring_size, tree_depth, compression, ...) sets how gradients
    are all-reduced (:mod:`deepseek.train.comm`); without it, DDP's flat all-reduce, timed for ``comm/*``;
    ``comm: false`` installs nothing (DDP's own all-reduce, no ``comm/*``: room for a hook of one's own).
    With compression the hook's state is per rank, so every rank takes part in each checkpoint
    (``collective_state_dict``) and its state is saved with it.
    """

    collective_state_dict = False  # True on an instance whose hook keeps per-rank state (see __init__)

    def __init__(self, comm: Mapping[str, Any] | bool | None = None, **kwargs: Any) -> None:
        allowed = [k for k in inspect.signature(DistributedDataParallel).parameters if k not in _SET_BY_DDP_STRATEGY]
        if unknown := sorted(set(kwargs) - set(allowed)):  # found now, not on every rank at launch
            raise ValueError(f"train.strategy: ddp has no argument {unknown[0]!r}; allowed: comm, {', '.join(allowed)}")
        self.kwargs = kwargs
        self.comm, self.comm_hook = check_comm_spec(comm), None
        if comm_has_state(self.comm):  # per-rank compression state: every rank joins each checkpoint
            self.collective_state_dict = True

    def setup(self, model: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
        if not (torch_dist.is_available() and torch_dist.is_initialized()):
            raise ValueError(
                "train.strategy: 'ddp' needs a process group; launch with torchrun (or `deepseek launch`), "
                "or use 'auto' to train on one process"
            )
        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids, **self.kwargs)
        self.comm_hook = install_comm_hook(ddp, self.comm)
        return ddp

    def comm_state_dict(self) -> list[Any] | None:
        """Every rank's all-reduce hook state (a collective when the hook compresses; else None)."""
        return gather_comm_state(self.comm_hook) if comm_has_state(self.comm) else None

    def load_comm_state_dict(self, states: list[Any] | None, dist: DistInfo) -> None:
        compression = self.comm.get("compression", "none") if isinstance(self.comm, Mapping) else "none"
        load_comm_state(self.comm_hook, states, dist, compression)

    def comm_metrics(self, steps: int, wall_s: float) -> dict[str, float]:
        """``comm/seconds``, ``comm/share``, ``comm/bytes`` over the last ``steps`` optimizer steps."""
        return comm_values(self.comm_hook, steps, wall_s)

    def no_sync(self, train_model: nn.Module) -> AbstractContextManager[Any]:
        """DDP's own ``no_sync``: gradients accumulate locally until the window's last micro-step."""
        return train_model.no_sync() if isinstance(train_model, DistributedDataParallel) else contextlib.nullcontext()

    def teardown(self, train_model: nn.Module) -> nn.Module:
        """The wrapped module. The caller drops the wrapper and collects garbage while the group still lives:
        DDP sits in a reference cycle that a later GC would free holding the GIL, and if its reducer were
        the group's last owner by then, a gloo group's destructor would wait for a worker thread that waits
        for the GIL: a hang."""
        return train_model.module if isinstance(train_model, DistributedDataParallel) else train_model


STRATEGY_METHODS = (
    "setup", "no_sync", "clip_grad_norm", "model_state_dict", "load_model_state_dict",
    "optimizer_state_dict", "load_optimizer_state_dict", "eval_module", "teardown",
)  # fmt: skip


def build_strategy(spec: Any, dist_info: DistInfo) -> Any:
    """The strategy ``spec`` names: None or ``"auto"`` (DDP in a world of several ranks, else single device),
    a registered name or import path, a ``{name, **kwargs}`` mapping or config Component, or an object
    that already is one (returned as it is)."""
    name, kwargs = _name_and_kwargs(spec)
    if name is None:
        built = spec
    elif name.lower() == AUTO:
        if kwargs:
            raise ValueError(
                f"train.strategy: 'auto' takes no arguments (got {', '.join(sorted(kwargs))}); "
                "name the strategy instead, e.g. {name: ddp, find_unused_parameters: true}"
            )
        built = DDP() if dist_info.enabled else SingleDevice()
    else:
        try:
            built = strategies.build(name, **kwargs)
        except RegistryError as exc:
            raise RegistryError(f"train.strategy: {exc}") from None
        except TypeError as exc:  # arguments the class does not take
            raise ValueError(f"train.strategy: {name}: {exc}") from None
    if missing := [m for m in STRATEGY_METHODS if not callable(getattr(built, m, None))]:
        raise ValueError(f"train.strategy: {type(built).__name__} lacks {', '.join(missing)}; "
                         f"a strategy needs {', '.join(STRATEGY_METHODS)}")  # fmt: skip
    return built


def _name_and_kwargs(spec: Any) -> tuple[str | None, dict[str, Any]]:
    """``(name, kwargs)`` of a name, a mapping or a Component; ``(None, {})`` for a strategy object."""
    if spec is None:
        return AUTO, {}
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        rest = {k: v for k, v in spec.items() if k != "name"}
        return str(spec.get("name", AUTO)), rest
    if isinstance(getattr(spec, "name", None), str) and isinstance(getattr(spec, "kwargs", None), dict):
        return spec.name, dict(spec.kwargs)  # deepseek.config's Component
    return None, {}


class ModelState:
    """The model's state through a strategy, as an object with ``state_dict()`` / ``load_state_dict()``:
    what the checkpoint writer and reader take (they also read tied-weight names from ``state_dict()``)."""

    def __init__(self, strategy: Any, model: nn.Module) -> None:
        self.strategy, self.model = strategy, model

    def state_dict(self) -> dict[str, Any]:
        state = self.strategy.model_state_dict(self.model)
        if state or not gathers_state(self.strategy):
            return state
        # A rank the gathered state does not go to: the names, tied ones sharing one tensor, for the
        # weights loader, which reads them (and the ties) from here before it calls load_state_dict.
        shared: dict[int, torch.Tensor] = {}
        return {name: shared.setdefault(id(t), torch.zeros(1)) for name, t in self.model.state_dict(keep_vars=True).items()}

    def snapshot(self) -> Any:
        """The state taken now (a collective under a gathering strategy: every rank calls it), as an
        object whose ``state_dict()`` returns it: what a writer on the main rank takes."""
        return _Snapshot(self.state_dict())

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = False) -> tuple[list[str], list[str]]:
        """Load ``state``; returns ``(missing, unexpected)`` key lists like ``nn.Module.load_state_dict``."""
        # Called on every rank; a gathering strategy gives the other ranks {}: they take the names locally.
        own = self.state_dict()  # a collective under a gathering strategy: every rank loads
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(f"missing keys {missing}, unexpected keys {unexpected}")
        self.strategy.load_model_state_dict(self.model, {k: v for k, v in state.items() if k in own})
        return missing, unexpected


class _Snapshot:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def gathers_state(strategy: Any) -> bool:
    """Whether ``strategy``'s state-dict methods are collectives (``collective_state_dict``): then every
    rank takes part in each checkpoint and in the final weights, and the main rank writes them."""
    return bool(getattr(strategy, "collective_state_dict", False))


class OptimizerState:
    """The optimizer's state through a strategy, as an object with ``state_dict()`` / ``load_state_dict()``."""

    def __init__(self, strategy: Any, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.strategy, self.model, self.optimizer = strategy, model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return self.strategy.optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.strategy.load_optimizer_state_dict(self.model, self.optimizer, state)


def optimizer_and_scheduler(
    strategy: Any, optimizer: torch.optim.Optimizer, model: nn.Module, scheduler: Any, total_steps: int | None
) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer the strategy trains with (``setup_optimizer``, optional: a sharding strategy may re-point
    or wrap it) and the scheduler on it: ``scheduler`` is a built LR scheduler, ``f(optimizer, total_steps)``
    (built here, on the strategy's optimizer) or None."""
    if hasattr(strategy, "setup_optimizer"):  # optional: a user's strategy may lack it
        given, optimizer = optimizer, strategy.setup_optimizer(optimizer, model)
        if optimizer is not given and getattr(scheduler, "optimizer", None) is given:  # it would set stale lrs
            raise ValueError("scheduler: it is bound to the optimizer that train.strategy replaced; pass "
                             "f(optimizer, total_steps) to build it on the strategy's optimizer")  # fmt: skip
    if callable(scheduler) and not hasattr(scheduler, "step"):
        if total_steps is None:
            raise ValueError("this scheduler needs the run length: set max_steps, or use a train loader with a length")
        scheduler = scheduler(optimizer, total_steps)
    return optimizer, scheduler
