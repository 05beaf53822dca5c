"""Search-style trials for tests/train/test_isolation.py: each trial adds its own directory to ``sys.path`` (as the
CLI and config import paths do), sets environment variables, and trains a user model named by import path.

``python -m tests.train.isolation_trials '<trial as JSON>'`` runs one trial alone in a fresh process and prints
its final weights' digest as JSON (the reference the in-process sequence must match bitwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

# The user's module: same name in every trial directory, different content (``bias``); its width comes from
# the environment, so a leaked variable or a stale module changes the model a later trial builds.
MODULE = """import os

import torch.nn as nn


class Net(nn.Sequential):
    def __init__(self, num_classes: int = 4) -> None:
        width = int(os.environ.get("TRIAL_WIDTH", "16"))
        super().__init__(nn.Linear(8, width, bias={bias}), nn.ReLU(), nn.Linear(width, num_classes))
"""


def write_trial_dir(root: Path, name: str, *, bias: bool) -> Path:
    """``root/name/trial_model.py``; returns the directory (to put on ``sys.path``)."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "trial_model.py").write_text(MODULE.format(bias=bias))
    return directory


def run_trial(trial: dict[str, Any]) -> dict[str, Any]:
    """Train ``trial`` = {dir, seed, deterministic, env} for three steps; the final weights as CPU tensors."""
    import deepseek as ds

    sys.path.insert(0, trial["dir"])
    os.environ.update(trial["env"])
    cfg = ds.load_config(None, data={
        "model": {"name": "trial_model:Net"},
        "data": {"name": "synthetic_classification", "num_samples": 64, "num_features": 8, "batch_size": 8},
        "optim": {"name": "sgd", "lr": 0.1},
        "train": {"seed": trial["seed"], "deterministic": trial["deterministic"], "max_steps": 3, "device": "cpu"},
        "logging": {"progress": "off"},
    })  # fmt: skip
    trainer = ds.Trainer.from_config(cfg)
    trainer.fit()
    return {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}


def digest(weights: dict[str, Any]) -> dict[str, str]:
    """Per tensor: shape and SHA-256 of its bytes (bitwise equality, printable across processes)."""
    return {k: f"{tuple(v.shape)}:{hashlib.sha256(v.numpy().tobytes()).hexdigest()}" for k, v in weights.items()}


if __name__ == "__main__":
    print(json.dumps(digest(run_trial(json.loads(sys.argv[1])))))
