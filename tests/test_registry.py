"""The one registry mechanism: names, aliases, import paths, suggestions, and `deepseek list`."""

from __future__ import annotations

import sys

import pytest

from deepseek import registry
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


USER_CODE = """
import subprocess
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width: int = 2):
        super().__init__()
        self.fc = nn.Linear(width, 1)

class Plain:
    pass

def net(width: int = 2):
    return Net(width)

def not_a_model():
    return 42

INSTANCE = Net()
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """``user_code_mod``: the user's own module, importable by its import paths."""
    (tmp_path / "user_code_mod.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("user_code_mod")
    sys.modules.pop("user_code_mod", None)


def test_import_path_resolves_user_code(user_code):
    r = Registry("widgets")
    assert r.get("user_code_mod:Net") is user_code.Net
    assert r.get("user_code_mod.net") is user_code.net
    with pytest.raises(RegistryError, match="cannot import module"):
        r.get("no_such_pkg:Thing")


@pytest.mark.parametrize("path", ["os:system", "subprocess:getoutput", "os.system", "builtins:eval", "posix:system"])
def test_standard_library_and_builtins_never_provide_components(path):
    for each in REGISTRIES.values():
        with pytest.raises(RegistryError, match=f"^'{path}': standard-library and built-in modules cannot provide"):
            each.get(path)


def test_a_standard_library_module_is_refused_before_it_is_imported(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "this", raising=False)  # `import this` prints the Zen of Python
    with pytest.raises(RegistryError, match="standard-library"):
        registry.models.get("this:s")
    assert "this" not in sys.modules and capsys.readouterr().out == ""


def test_the_standard_library_is_not_reached_through_another_module(user_code):
    with pytest.raises(RegistryError, match="standard-library"):
        registry.models.get("user_code_mod:subprocess.getoutput")
    with pytest.raises(RegistryError, match="'__init__' .*not allowed"):
        registry.models.get("user_code_mod:Net.__init__")


@pytest.mark.parametrize(
    ("kind", "path", "says"),
    [
        ("models", "user_code_mod:INSTANCE", "is a Net object, not a class or function"),
        ("models", "user_code_mod:torch", "is a module, not a class or function"),
        ("models", "user_code_mod:Plain", "is not a subclass of torch.nn.Module"),
        ("optimizers", "user_code_mod:Net", "is not a subclass of torch.optim.Optimizer"),
        ("schedulers", "user_code_mod:Net", "is not a subclass of torch.optim.lr_scheduler.LRScheduler"),
        ("datasets", "user_code_mod:Net", "is not a subclass of torch.utils.data.Dataset"),
        ("losses", "user_code_mod:Plain", "is not a subclass of torch.nn.Module"),
    ],
)
def test_an_import_path_must_name_a_class_or_function_of_the_expected_kind(user_code, kind, path, says):
    with pytest.raises(RegistryError, match=f"^'{path}' .*{says}"):
        REGISTRIES[kind].get(path)


def test_kinds_that_fit_resolve(user_code):
    import torch

    assert registry.models.get("user_code_mod:Net") is user_code.Net
    assert registry.models.get("user_code_mod:net") is user_code.net
    assert registry.optimizers.get("torch.optim:SGD") is torch.optim.SGD
    assert registry.callbacks.get("user_code_mod:Plain") is user_code.Plain  # any class or function
    assert isinstance(registry.models.build("user_code_mod:net", width=3), user_code.Net)


def test_a_builder_that_returns_the_wrong_kind_is_named(user_code):
    with pytest.raises(RegistryError, match=r"^'user_code_mod:not_a_model' returned a int, not a torch.nn.Module"):
        registry.models.build("user_code_mod:not_a_model")


def test_untrusted_code_is_refused_without_importing_it(tmp_path, monkeypatch):
    (tmp_path / "side_effect_mod.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with registry.refusing_import_paths("code named by a model directory runs only with --trust-code"):
        with pytest.raises(RegistryError, match=r"^'side_effect_mod:Net' is an import path; code named by a model"):
            registry.models.get("side_effect_mod:Net")
        assert registry.models.get("simple_cnn")  # registered names always work
    assert not (tmp_path / "imported").exists() and "side_effect_mod" not in sys.modules


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
