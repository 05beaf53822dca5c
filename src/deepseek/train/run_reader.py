"""Read a run directory written by ``deepseek train``: its resolved ``config.yaml`` and trained weights -> model.

The one place that turns a run directory back into a model, used by ``deepseek eval`` (which weights a
checkpoint path names) and by serving (:mod:`deepseek.serve.repository`). It builds no dataset, loader,
optimizer or Trainer.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from deepseek.config import Config
from deepseek.config.trust import load_directory_config
from deepseek.train.build import TrainedWeights, build_model, find_trained_weights, load_trained_weights

CONFIG_FILE = "config.yaml"
FINAL_WEIGHTS = Path("final") / "model.safetensors"

__all__ = ["CONFIG_FILE", "FINAL_WEIGHTS", "TrainedWeights", "find_trained_weights", "load_trained_weights",
           "read_run", "read_run_config"]  # fmt: skip


def read_run_config(run_dir: str | Path, *, trust_code: bool = False) -> Config:
    """The run's resolved config; without ``trust_code`` it may name registered components only."""
    return load_directory_config(Path(run_dir) / CONFIG_FILE, trust_code=trust_code)


def read_run(run_dir: str | Path, *, trust_code: bool = False) -> tuple[Config, nn.Module]:
    """The run's config and its model with the final weights loaded (the EMA average when the run used
    EMA), in eval mode. Builds the model only: no dataset, optimizer or Trainer."""
    cfg = read_run_config(run_dir, trust_code=trust_code)
    model = load_trained_weights(build_model(cfg), Path(run_dir) / FINAL_WEIGHTS)
    return cfg, model.eval()
