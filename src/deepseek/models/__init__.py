"""Built-in model builders, registered by name (``ds.models.build('simple_cnn', num_classes=10)``)."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from deepseek.models import basic  # noqa: F401  (registers the builders)
from deepseek.registry import models as registry


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model (names are case-insensitive) or one named by import path."""
    return registry.build(name, **kwargs)


def list_models() -> list[str]:
    return registry.names()


__all__ = ["build", "list_models", "registry"]
