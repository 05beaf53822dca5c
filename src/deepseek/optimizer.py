"""``deepseek.optimizer``: another name for :mod:`deepseek.optim` (document 004 imports
``from deepseek.optimizer import MixedPrecision``)."""

from __future__ import annotations

from typing import Any

from deepseek import optim as _optim
from deepseek.optim import *  # noqa: F403
from deepseek.optim import __all__  # noqa: F401


def __getattr__(name: str) -> Any:
    return getattr(_optim, name)
