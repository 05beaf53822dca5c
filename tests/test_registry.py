"""The one registry mechanism: names, aliases, import paths, suggestions, and `deepseek list`."""

from __future__ import annotations

import pytest

from deepseek.cli.main import main
from deepseek.registry import REGISTRIES, Registry, RegistryError


def test_register_lookup_alias_and_case():
    r = Registry("widgets")

    @r.register("tiny", aliases=("t",))
    def tiny(width: int = 4):
        """A tiny widget."""
        return width

    assert r.get("TINY") is tiny and r.get("t") is tiny and "Tiny" in r
    assert r.build("tiny", width=3) == 3 and r.summary("tiny") == "A tiny widget."
    with pytest.raises(RegistryError, match="already registered"):
        r.register("tiny")(tiny)


def test_unknown_name_suggests_and_lists():
    r = Registry("widgets")
    r.register("resnet18")(lambda: None)
    with pytest.raises(RegistryError, match=r"did you mean 'resnet18'.*registered: resnet18"):
        r.get("resnet81")


def test_import_path_resolves_user_code():
    r = Registry("widgets")
    assert r.get("collections:OrderedDict") is __import__("collections").OrderedDict
    assert r.get("collections.OrderedDict") is __import__("collections").OrderedDict
    with pytest.raises(RegistryError, match="cannot import module"):
        r.get("no_such_pkg:Thing")


def test_every_kind_exists_and_builtins_are_registered():
    assert set(REGISTRIES) == {
        "models",
        "datasets",
        "transforms",
        "optimizers",
        "schedulers",
        "callbacks",
        "metrics",
        "losses",
    }
    assert {"mlp", "simple_cnn"} <= set(REGISTRIES["models"].names())
    assert "digits" in REGISTRIES["datasets"] and "early_stopping" in REGISTRIES["callbacks"]


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_deepseek_list_prints_each_kind(capsys, kind):
    assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{kind} ({len(REGISTRIES[kind])}):")
    for name in REGISTRIES[kind].names():
        assert REGISTRIES[kind].display_name(name) in out
    if kind == "transforms":
        assert "[vision]" in out and "[pointcloud]" in out


def test_unknown_loss_names_the_kind_in_the_singular():
    from deepseek import registry

    with pytest.raises(registry.RegistryError, match=r"^unknown loss 'nope'"):
        registry.losses.get("nope")
