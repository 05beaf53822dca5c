"""A model directory is data: code its config.yaml or serve.yaml names runs only with --trust-code."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import save_file

from deepseek.cli.main import main
from deepseek.config import ConfigError
from deepseek.registry import RegistryError
from deepseek.serve import discover
from deepseek.serve.repository import ModelDirError
from tests.conftest import write_yaml
from tests.serve.conftest import digits_samples

DIR_CODE = '''
import torch
open({marker!r}, "w").close()  # what importing this module does: it runs its top-level code

class Net(torch.nn.Module):
    """(N, 1, 8, 8) digits -> (N, 10) scores."""
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
    def forward(self, x):
        return self.fc(x.flatten(1))

def make(**kwargs):
    raise AssertionError("never built")
'''
REFUSED = "is an import path; code named by a model directory runs only with --trust-code"


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    """Where a refusal is missing, the test fails instead of serving forever: the server returns at once."""
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)


@pytest.fixture
def dir_code(tmp_path, monkeypatch):
    """``dir_code``: a module shipped with a model directory; importing it creates ``tmp_path/imported``."""
    marker = tmp_path / "imported"
    (tmp_path / "dir_code.py").write_text(DIR_CODE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("dir_code", None)


def _net_weights(path) -> None:
    """Weights for ``dir_code.Net``, written without importing it."""
    save_file({"fc.weight": torch.randn(10, 64), "fc.bias": torch.zeros(10)}, str(path))


def _run_dir(tmp_path, model: dict, **data) -> str:
    """A run directory whose config names ``model`` (weights for ``dir_code.Net`` unless it is registered)."""
    from safetensors.torch import save_model

    from deepseek.registry import models

    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    write_yaml(run / "config.yaml", {"model": model, "data": {"name": "digits", "batch_size": 8, **data},
                                     "train": {"max_steps": 1}})  # fmt: skip
    if model["name"] in models:
        save_model(models.build(**model), run / "final" / "model.safetensors")
    else:
        _net_weights(run / "final" / "model.safetensors")
    return str(run)


@pytest.mark.parametrize("trust", [[], ["--trust-code"]])
def test_serving_a_run_whose_config_names_os_system_runs_nothing(tmp_path, capsys, trust):
    marker = tmp_path / "pwned"
    run = _run_dir(tmp_path, {"name": "os:system", "command": f"touch {marker}"})
    assert main(["serve", "--model_dir", run, "--port", "0", *trust]) == 2
    err = capsys.readouterr().err
    assert not marker.exists() and err.count("\n") == 1 and "Traceback" not in err
    says = "standard-library and built-in modules cannot provide" if trust else f"model.name 'os:system' {REFUSED}"
    assert says in err


def test_a_run_naming_its_own_code_is_served_only_with_trust_code(tmp_path, capsys, dir_code):
    run = _run_dir(tmp_path, {"name": "dir_code:Net"})
    assert main(["serve", "--model_dir", run, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"config.yaml': model.name 'dir_code:Net' {REFUSED}" in err and err.count("\n") == 1
    assert not dir_code.exists() and "dir_code" not in sys.modules
    (m, *_) = discover(run, trust_code=True)
    x, _ = digits_samples(3)
    assert dir_code.exists() and len(m.run(m.parse(x)[0])) == 3


def test_a_preprocess_step_named_by_import_path_needs_trust_code(tmp_path, dir_code):
    run = _run_dir(tmp_path, {"name": "simple_cnn", "in_channels": 1, "num_classes": 10},
                   preprocess=[{"type": "dir_code:make"}])  # fmt: skip
    with pytest.raises(ConfigError, match=rf"data.preprocess\[0\] 'dir_code:make' {REFUSED}"):
        discover(run)
    assert not dir_code.exists()


def test_an_import_path_in_any_other_key_is_refused_too(tmp_path, dir_code):
    """``subset``'s ``dataset:`` names a dataset the config check does not resolve: the registry refuses it."""
    run = _run_dir(tmp_path, {"name": "simple_cnn", "in_channels": 1, "num_classes": 10, "width": 8},
                   name="subset", dataset="dir_code:make", train_size=4)  # fmt: skip
    with pytest.raises((ModelDirError, ConfigError, RegistryError), match=REFUSED):
        discover(run)
    assert not dir_code.exists()


def test_a_serve_yaml_naming_code_needs_trust_code(tmp_path, capsys, dir_code):
    _net_weights(tmp_path / "net.safetensors")
    entry = {"name": "net", "path": "net.safetensors", "model": {"name": "dir_code:Net"},
             "inputs": {"x": {"shape": [1, 8, 8], "dtype": "float32"}}}  # fmt: skip
    write_yaml(tmp_path / "serve.yaml", {"models": [entry]})
    assert main(["serve", "--model_dir", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"serve.yaml: models[0].model.name 'dir_code:Net' {REFUSED}" in err and err.count("\n") == 1
    assert not dir_code.exists()
    (m,) = discover(tmp_path, trust_code=True)
    assert dir_code.exists() and m.name == "net"
    marker = tmp_path / "pwned"
    write_yaml(
        tmp_path / "serve.yaml", {"models": [{**entry, "model": {"name": "os:system", "command": f"touch {marker}"}}]}
    )
    assert main(["serve", "--model_dir", str(tmp_path), "--port", "0", "--trust-code"]) == 2
    assert "standard-library and built-in modules" in capsys.readouterr().err and not marker.exists()


def test_export_reads_code_from_the_runs_config_only_with_trust_code(tmp_path, capsys, dir_code):
    run = _run_dir(tmp_path, {"name": "dir_code:Net"})
    out, weights = str(tmp_path / "net.onnx"), f"{run}/final/model.safetensors"  # config.yaml: the run's, above
    assert main(["export", weights, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"model.name 'dir_code:Net' {REFUSED}" in err and not dir_code.exists()
    assert main(["export", weights, "--out", out, "--trust-code"]) == 0
    assert dir_code.exists()


def test_eval_takes_its_config_from_the_command_line_so_it_may_name_the_users_code(tmp_path, capsys, dir_code):
    """``deepseek eval CONFIG``: CONFIG is what the user typed, as for ``train``; the standard library stays out."""
    run = _run_dir(tmp_path, {"name": "dir_code:Net"})
    weights = f"{run}/final/model.safetensors"
    assert main(["eval", f"{run}/config.yaml", "--checkpoint", weights, "--json"]) == 0
    assert dir_code.exists() and "val/loss" in json.loads(capsys.readouterr().out.splitlines()[-1])
    marker = tmp_path / "pwned"
    bad = write_yaml(tmp_path / "bad.yaml", {"model": {"name": "os:system", "command": f"touch {marker}"},
                                              "data": {"name": "digits"}})  # fmt: skip
    assert main(["eval", str(bad), "--checkpoint", weights]) == 2
    assert not marker.exists() and "standard-library and built-in modules" in capsys.readouterr().err
