"""Import paths in command-line configs: the user's own classes and functions, never the standard library."""

from __future__ import annotations

import pytest

from deepseek.cli.main import main
from tests.conftest import write_yaml

# (import path, the keyword argument that would carry the shell command)
SHELL_RUNNERS = [("os:system", "command"), ("subprocess:getoutput", "cmd")]


def _config(tmp_path, model: dict) -> str:
    cfg = {
        "model": model,
        "data": {"name": "digits", "batch_size": 16},
        "train": {"max_steps": 1},
        "logging": {"progress": "off", "tensorboard": False},
        "checkpoint": {"every_minutes": None, "save_best": False},
    }
    return str(write_yaml(tmp_path / "cfg.yaml", cfg))


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize(("path", "arg"), SHELL_RUNNERS)
def test_a_config_cannot_run_a_shell_command_through_the_standard_library(tmp_path, capsys, command, path, arg):
    marker = tmp_path / "pwned"
    cfg = _config(tmp_path, {"name": path, arg: f"touch {marker}"})
    argv = ["config", "validate", cfg] if command == "validate" else ["train", cfg, "--run-dir", str(tmp_path / "r")]
    code = main(argv)
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"model.name: '{path}': standard-library and built-in modules cannot provide components" in err


def test_a_builtin_is_no_component_either(tmp_path, capsys):
    cfg = _config(tmp_path, {"name": "simple_cnn", "in_channels": 1, "num_classes": 10})
    code = main(["config", "validate", cfg, "callbacks=[{name: 'builtins:exec', source: 'import os'}]"])
    err = capsys.readouterr().err
    assert code == 2 and "callbacks[0].name: 'builtins:exec': standard-library and built-in modules" in err


def test_the_users_own_model_class_still_works_and_the_wrong_kind_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, width: int = 4):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(64, width)\n"
        "class NotAModel:\n"
        "    def __init__(self, width: int = 4): ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["config", "validate", _config(tmp_path, {"name": "my_nets:Net", "width": 10})]) == 0
    assert capsys.readouterr().out.endswith(": ok\n")
    assert main(["config", "validate", _config(tmp_path, {"name": "my_nets:NotAModel"})]) == 2
    err = capsys.readouterr().err
    assert "model.name: 'my_nets:NotAModel' is not a subclass of torch.nn.Module" in err and err.count("\n") == 1
