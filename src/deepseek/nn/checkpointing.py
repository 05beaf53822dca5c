"""Gradient checkpointing: the one mechanism every model uses (non-reentrant ``torch.utils.checkpoint``).

:func:`run_checkpointed` runs one call (a block of a model) so that its activations are recomputed in
backward instead of kept; the built-in models' ``gradient_checkpointing_enable()`` and
:func:`checkpoint_modules` both go through it.

``checkpoint_modules(model, ["layers.0", "layers.1"])``, a regex, or module types: those modules
recompute their forward during backward instead of keeping activations. Their parameters and
``state_dict`` keys are untouched (the instance's ``forward`` is swapped, not the module), a
``copy.deepcopy`` of the model (EMA, quantization) runs its own weights, and ``enable=False``
restores them.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

T = TypeVar("T")


def run_checkpointed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` without keeping its intermediate activations: backward recomputes them.

    Non-reentrant checkpointing (``use_reentrant=False``): keyword arguments, outputs that are tuples
    of tensors, and inputs that need no gradient all work. Without autograd (evaluation, generation)
    it is a plain call, as there is nothing to recompute.
    """
    if torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False, **kwargs)
    return fn(*args, **kwargs)


def _selected(model: nn.Module, targets: Sequence[str] | str | Sequence[type] | type) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if not name:
            continue
        if isinstance(targets, type) or (
            isinstance(targets, (list, tuple)) and targets and isinstance(targets[0], type)
        ):
            hit = isinstance(m, tuple(targets) if isinstance(targets, (list, tuple)) else targets)
        elif isinstance(targets, str):
            hit = re.fullmatch(targets, name) is not None
        else:
            hit = any(name == t or name.endswith("." + t) for t in targets)
        if hit:
            out.append((name, m))
    return out


def checkpoint_modules(
    model: nn.Module, targets: Sequence[str] | str | Sequence[type] | type, enable: bool = True
) -> list[str]:
    """Checkpoint (or, with ``enable=False``, stop checkpointing) the matching submodules; returns their names."""
    chosen = _selected(model, targets)
    if not chosen:
        raise ValueError(f"checkpoint targets {targets!r} match no submodule")
    for _, m in chosen:
        if enable and "_ds_forward" not in m.__dict__:
            # A bound method, which copy.deepcopy re-binds to the copy (a closure would keep running
            # the original's weights): EMA's AveragedModel and the Quantizer deep-copy the model.
            m._ds_forward = m.__dict__.get("forward")  # an instance-level forward to keep, or None
            m.forward = types.MethodType(_checkpointed_forward, m)
        elif not enable and "_ds_forward" in m.__dict__:
            inner = m.__dict__.pop("_ds_forward")
            if inner is None:
                del m.forward  # the class's forward again
            else:
                m.forward = inner
    return [name for name, _ in chosen]


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The swapped-in ``forward``: ``self`` is looked up at call time, so a deep copy runs its own weights."""
    inner = self._ds_forward if self._ds_forward is not None else functools.partial(type(self).forward, self)
    return run_checkpointed(inner, *args, **kwargs)
