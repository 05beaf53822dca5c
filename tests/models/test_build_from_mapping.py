"""``ds.models.build`` accepts a model mapping as configs hold it (``{"name": ..., **overrides}``)."""

import pytest

import deepseek as ds
from deepseek.registry import RegistryError


def test_build_accepts_a_config_mapping_and_applies_its_overrides():
    from_mapping = ds.models.build({"name": "simple_cnn", "num_classes": 7})
    from_name = ds.models.build("simple_cnn", num_classes=7)
    assert type(from_mapping) is type(from_name)
    assert [p.shape for p in from_mapping.parameters()] == [p.shape for p in from_name.parameters()]


def test_keyword_overrides_win_over_the_mapping_and_the_mapping_is_not_modified():
    cfg = {"name": "simple_cnn", "num_classes": 7}
    model = ds.models.build(cfg, num_classes=3)
    assert list(model.parameters())[-1].shape[0] == 3
    assert cfg == {"name": "simple_cnn", "num_classes": 7}


def test_a_mapping_without_name_is_a_one_line_error():
    with pytest.raises((ValueError, RegistryError), match="name"):
        ds.models.build({"num_classes": 7})
