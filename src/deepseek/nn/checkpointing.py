"""Gradient checkpointing for chosen submodules of any model (``torch.utils.checkpoint`` underneath).

``checkpoint_modules(model, ["layers.0", "layers.1"])``, a regex, or module types: those modules
recompute their forward during backward instead of keeping activations. Their parameters and
``state_dict`` keys are untouched (the instance's ``forward`` is swapped, not the module), and
``enable=False`` restores them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


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
            original = m.forward
            m._ds_forward = original

            def forward(*args: Any, _f=original, **kwargs: Any) -> Any:
                if torch.is_grad_enabled():
                    return checkpoint(_f, *args, use_reentrant=False, **kwargs)
                return _f(*args, **kwargs)

            m.forward = forward
        elif not enable and "_ds_forward" in m.__dict__:
            m.forward = m.__dict__.pop("_ds_forward")
    return [name for name, _ in chosen]
