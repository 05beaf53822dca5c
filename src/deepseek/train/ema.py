"""Exponential moving average of a model's weights that works under every strategy, sharded ones included.

``ema = decay * ema + (1 - decay) * weights`` after each optimizer step; the first update copies the weights
(as torch's ``AveragedModel`` with ``get_ema_multi_avg_fn`` and ``use_buffers=True`` does: same numbers).

Unlike ``AveragedModel``, the average is not a deep copy of the module made before training: it is one
shadow tensor per parameter and buffer, taken from the model AFTER the strategy has set it up. Under FSDP2
(ZeRO-2/3) the parameters are sharded DTensors, so their shadows are DTensors with the same sharding: no
rank ever holds the whole average. Using the average (validation, ``final/``, checkpoints) swaps it into
the model's own parameters in place for a moment (:meth:`ExponentialMovingAverage.swapped_in`), so it goes
through the strategy like the weights do: gathered for a checkpoint, sharded again on load.

The checkpoint format is ``AveragedModel``'s: ``module.<name>`` per tensor and ``n_averaged``, which
``deepseek.runs.load_trained_weights`` reads.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn

from deepseek.train.strategy import ModelState, SingleDevice

PREFIX = "module."


class ExponentialMovingAverage:
    """The EMA of ``model``'s parameters and buffers, shaped and sharded like them.

    Build it after ``strategy.setup(model)``: it averages the tensors the model holds then (a sharded
    model's local shards). ``strategy`` gives the state a checkpoint holds (default: single device).
    """

    def __init__(self, model: nn.Module, decay: float, strategy: Any = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"train.ema_decay: {decay!r} is not allowed; use a number from 0 to 1")
        self.model, self.decay = model, decay
        self.strategy = strategy if strategy is not None else SingleDevice()
        self.n_averaged = 0
        # The model's own tensor objects (tied ones once): FSDP2 keeps its sharded parameters as the same
        # objects between steps, and the optimizer updates them in place, so these stay the weights.
        self._tensors = [t for t in _unique(model) if t is not None]
        with torch.no_grad():
            self._shadow = [t.detach().clone() for t in self._tensors]

    def shadow_tensors(self) -> list[torch.Tensor]:
        """The average, one tensor per parameter and buffer (DTensor shards under FSDP2)."""
        return list(self._shadow)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module | None = None) -> None:
        """Fold the model's current weights into the average (after an optimizer step)."""
        weights = [t.detach() for t in self._tensors]
        if self.n_averaged == 0:
            _copy_into(self._shadow, weights)
        else:
            floats = [(s, w) for s, w in zip(self._shadow, weights) if s.is_floating_point() or s.is_complex()]
            # one foreach per mesh: DTensor refuses plain tensors (pipeline x tp: norms stay plain) in one call
            for mesh in {getattr(s, "device_mesh", None) for s, _ in floats}:
                pairs = [(s, w) for s, w in floats if getattr(s, "device_mesh", None) == mesh]
                torch._foreach_lerp_([s for s, _ in pairs], [w for _, w in pairs], 1.0 - self.decay)
            for s, w in zip(self._shadow, weights):  # integer buffers: AveragedModel's own formula
                if not (s.is_floating_point() or s.is_complex()):
                    s.copy_(s * self.decay + w * (1 - self.decay))
        self.n_averaged += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[nn.Module]:
        """The model holding the average, for the ``with`` block (the trained weights come back after it).
        Under FSDP2 a collective-free, in-place copy into each rank's shards; every rank enters it."""
        _reshard(self.model)  # ZeRO-2 may hold gathered parameters after a forward: shards only in here
        with torch.no_grad():
            trained = [t.detach().clone() for t in self._tensors]
            _copy_into([t.detach() for t in self._tensors], self._shadow)
        try:
            yield self.model
        finally:
            _reshard(self.model)  # parameters a forward gathered hold the average: drop them
            with torch.no_grad():
                _copy_into([t.detach() for t in self._tensors], trained)

    @property
    def module(self) -> nn.Module:
        """A separate copy of the model holding the average (an unsharded model only; use :meth:`swapped_in`
        under FSDP)."""
        if any(hasattr(t, "device_mesh") for t in self._tensors):
            raise ValueError("ema.module: the model is sharded; use `with ema.swapped_in() as model:` instead")
        with self.swapped_in() as model:
            return copy.deepcopy(model)

    def weights(self) -> dict[str, Any]:
        """The average by the model's state-dict names, through the strategy: under a gathering one a collective
        every rank calls (the full average on rank 0, placeholders elsewhere). No tensor aliases the model's."""
        with self.swapped_in() as model:
            state = ModelState(self.strategy, model).state_dict()
            own = {getattr(t, "_local_tensor", t).untyped_storage().data_ptr() for t in model.state_dict().values()}
            copies: dict[tuple[int, int], torch.Tensor] = {}  # tied names keep sharing one copy (stored once)
            # A strategy that returns the model's own tensors (single device, DDP; FSDP2 on one rank, whose
            # "gathered" tensors are its shards): copy them before the trained weights come back.
            return {k: _copy(v, copies) if _aliases(v, own) else v for k, v in state.items()}

    def snapshot(self) -> Any:
        """The average as ``ModelState.snapshot()`` gives the weights: an object whose ``state_dict()`` returns it."""
        return _Weights(self.weights())

    def state_dict(self) -> dict[str, Any]:
        """``module.<name>`` per tensor (see :meth:`weights`: a collective under a gathering strategy) and
        ``n_averaged``."""
        state = self.weights()
        return {**{PREFIX + k: v for k, v in state.items()}, "n_averaged": torch.tensor(self.n_averaged)}

    def sharded_state(self) -> dict[str, torch.Tensor]:
        """The average by state-dict name, each tensor the shadow itself (a DTensor shard under FSDP2): what a
        sharded checkpoint writes through DCP without gathering it, and loads into in place."""
        index = {id(t): i for i, t in enumerate(self._tensors)}
        named = self.model.state_dict(keep_vars=True).items()
        return {name: self._shadow[index[id(t)]] for name, t in named if id(t) in index}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a full average that every rank holds (as :meth:`state_dict` or ``AveragedModel`` wrote it); a
        sharded checkpoint's entry holds only ``n_averaged`` (its average was loaded into :meth:`sharded_state`)."""
        weights = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
        if not weights:
            self.n_averaged = int(state.get("n_averaged", 1))
            return
        with self.swapped_in() as model:
            ModelState(self.strategy, model).load_state_dict(weights)
            with torch.no_grad():  # the loaded average, taken back before the trained weights return
                _copy_into(self._shadow, [t.detach() for t in self._tensors])
        self.n_averaged = int(state.get("n_averaged", 1))


class _Weights:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def _copy_into(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``target.copy_(source)`` pairwise (DTensor has no sharding rule for ``_foreach_copy_``)."""
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)


def _aliases(value: Any, storages: set[int]) -> bool:
    return isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in storages


def _copy(tensor: torch.Tensor, copies: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
    """A copy of ``tensor``; tensors that view the same memory alike share one copy."""
    key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
    if key not in copies:
        copies[key] = tensor.clone()
    return copies[key]


def _unique(model: nn.Module) -> list[torch.Tensor]:
    """The model's parameters then buffers, each tensor once (tied weights share one)."""
    seen: set[int] = set()
    out = []
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _reshard(model: nn.Module) -> None:
    """Free the gathered parameters of every FSDP2 module in ``model`` (its sharded ones are registered again)."""
    for module in model.modules():
        if callable(reshard := getattr(module, "reshard", None)) and hasattr(module, "unshard"):
            reshard()
