"""``deepseek train`` run in-process (``main([...])``, as a search driver or a notebook may) leaves no process-wide
state behind: RNG states, deterministic flags, environment, ``sys.path`` (the cwd it adds for import paths) and
the user's module imported through it (``ds.train.isolated_run`` around the run)."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from deepseek.cli.main import main


def globals_now() -> dict[str, Any]:
    return {
        "random": random.getstate(),
        "numpy": repr(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state().tolist(),
        "deterministic": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),  # fmt: skip
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "environ": dict(os.environ),
        "sys.path": list(sys.path),
        "user module": "cli_trial_model" in sys.modules,
    }


def test_train_in_process_leaves_every_global_as_it_found_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cli_trial_model.py").write_text(
        "import torch.nn as nn\n\n\ndef net(num_classes: int = 4) -> nn.Module:\n"
        "    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, num_classes))\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "cli_trial_model:net"},
        "data": {"name": "synthetic_classification", "num_samples": 64, "num_features": 8, "batch_size": 16},
        "train": {"max_steps": 2, "seed": 5, "deterministic": True, "device": "cpu"},
    }))  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the CLI puts the cwd on sys.path: the config's import path lives there
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # seed_everything sets it when deterministic
    random.seed(99)
    for i in range(2):
        before = globals_now()
        assert main(["train", str(config), "--run-dir", str(tmp_path / f"run{i}"), "--progress", "off"]) == 0
        after = globals_now()
        assert after == before, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
