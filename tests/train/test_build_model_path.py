"""One model-building path: a config's ``model:`` section builds what ``ds.models.build`` builds from Python
(the model's shipped template, then the overrides), for every registered model that ships a template."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import pytest
import torch

import deepseek as ds
import deepseek.models as models_pkg
from deepseek.train.build import build_model

TEMPLATED = [name for name in ds.models.list_models() if ds.models.template(name)]


def _config(model: dict[str, Any]) -> ds.Config:
    return ds.load_config(None, data={"model": model, "data": {"name": "synthetic_classification"}, "optim": "adamw"})


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# builders that load pretrained weights refuse the meta device (transformers' from_pretrained): built for real
LOADS_WEIGHTS = {"minilm"}


@pytest.mark.parametrize("name", TEMPLATED)
def test_a_config_builds_the_same_model_as_python_from_the_template(name: str) -> None:
    with nullcontext() if name in LOADS_WEIGHTS else torch.device("meta"):  # meta: shapes only, no memory
        from_python = ds.models.build(name)
        from_config = build_model(_config({"name": name}))
    assert type(from_config) is type(from_python)
    assert _shapes(from_config) == _shapes(from_python)


def test_config_kwargs_override_the_template_like_python_keywords() -> None:
    with torch.device("meta"):
        from_python = ds.models.build("resnet50", num_classes=10)
        from_config = build_model(_config({"name": "resnet50", "num_classes": 10}))
    assert _shapes(from_config) == _shapes(from_python)
    assert list(from_config.parameters())[-1].shape[0] == 10


def test_a_template_value_reaches_a_config_built_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # a template that differs from the builder's default: both paths must start from the template
    shipped = models_pkg.template

    def template(name: str) -> dict[str, Any]:
        found = shipped(name)
        if models_pkg.registry.canonical(name) == "simple_cnn":
            found = {**found, "model": {**found.get("model", {}), "num_classes": 3}}
        return found

    monkeypatch.setattr(models_pkg, "template", template)
    from_python = ds.models.build("simple_cnn")
    from_config = build_model(_config({"name": "simple_cnn"}))
    assert list(from_python.parameters())[-1].shape[0] == 3
    assert _shapes(from_config) == _shapes(from_python)
