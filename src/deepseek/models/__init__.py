"""Built-in models: registered builders, each with a YAML template shipped in ``models/templates/``.

``ds.models.build('resnet50', num_classes=10)`` starts from the template's values and applies the
overrides; a config's ``model: {name: resnet50, num_classes: 10}`` goes through the same function.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import torch
import torch.nn as nn
import yaml

from deepseek.models import basic, language, mobile, pretrained, sequence, speech, structured, vision  # noqa: F401
from deepseek.models.onnx_import import from_onnx
from deepseek.models.weights import load_pretrained
from deepseek.registry import models as registry

# Every model accepts pretrained=PATH (a config's model.pretrained): a local HF / timm / torchvision checkpoint.
registry.add_build_option("pretrained", load_pretrained, annotation=str | None)


def template(name: str) -> dict[str, Any]:
    """The shipped template of a registered model: ``{"model": {...}, "example": {...}}`` (empty if none)."""
    key = registry.canonical(name)
    path = resources.files("deepseek") / "models" / "templates" / f"{key}.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def template_kwargs(name: str) -> dict[str, Any]:
    """The builder arguments a registered model's template sets (``{}`` for an import path or no template):
    what both :func:`build` and a config's ``model:`` section start from."""
    if name not in registry:
        return {}
    return {k: v for k, v in template(name).get("model", {}).items() if k != "name"}


def build(name: str | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Build a registered model (case-insensitive) from its template with ``overrides``, or one named by import path.

    The one model-building path: configs (``model: {name: resnet50, num_classes: 10}``) come here too."""
    if isinstance(name, Mapping):  # a config's model section, {"name": ..., **overrides}
        if "name" not in name:
            raise ValueError(f"model: a mapping needs 'name' (a registered model or import path); got {sorted(name)}")
        return build(**{**name, **overrides})
    return registry.build(name, **{**template_kwargs(name), **overrides})


def parameter_count(name: str, **overrides: Any) -> int:
    """Parameters of a model built on the meta device (no memory is allocated); tied weights count once."""
    with torch.device("meta"):
        model = build(name, **overrides)
    return sum(p.numel() for p in model.parameters())


def list_models() -> list[str]:
    return registry.names()


__all__ = ["build", "from_onnx", "list_models", "parameter_count", "registry", "template", "template_kwargs"]
