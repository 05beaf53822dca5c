"""deepseek.runs: a run directory (config.yaml + final weights) -> the trained model, no dataset."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_model

from deepseek.config import ConfigError
from deepseek.registry import models
from deepseek.runs import read_run
from tests.conftest import write_yaml


def _run_dir(tmp_path, model_name: str = "mlp"):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    write_yaml(run / "config.yaml", {"model": {"name": model_name, "in_features": 4, "hidden": [3], "num_classes": 2},
                                     "data": {"name": "iris", "batch_size": 2}})  # fmt: skip
    torch.manual_seed(0)
    trained = models.build("mlp", in_features=4, hidden=[3], num_classes=2)
    save_model(trained, str(run / "final" / "model.safetensors"))
    return run, trained


def test_read_run_gives_the_config_and_the_model_with_its_final_weights_in_eval_mode(tmp_path):
    run, trained = _run_dir(tmp_path)
    cfg, model = read_run(run)
    assert cfg.model.name == "mlp" and not model.training
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), trained.eval()(x))


def test_read_run_refuses_code_named_by_an_untrusted_run_directory(tmp_path):
    run, _ = _run_dir(tmp_path, model_name="my_models:Probe")
    with pytest.raises(ConfigError, match="import path"):
        read_run(run)
