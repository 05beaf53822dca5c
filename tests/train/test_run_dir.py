"""A run directory holds one run: training into one with checkpoints needs ``--resume`` or ``--overwrite``
(``resume=`` or ``overwrite=True`` from Python), so a later ``--resume auto`` never mixes two runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from tests.conftest import run_cli, write_yaml


def config(tmp_path: Path) -> Path:
    return write_yaml(
        tmp_path / "cfg.yaml",
        {
            "model": {"name": "simple_cnn", "width": 4},
            "data": {"name": "digits", "batch_size": 64},
            "optim": {"name": "adamw", "lr": 3e-3},
            "train": {"max_steps": 4, "seed": 0, "val_every_steps": 1},  # best.json from step 1 on
            "checkpoint": {"every_steps": 2, "keep_last": 10, "monitor": "val/accuracy", "mode": "max"},
            "logging": {"every_steps": 1, "progress": "off", "tensorboard": True},
        },
    )


def step_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))


@pytest.mark.slow
def test_cli_refuses_a_used_run_dir_and_overwrite_removes_only_the_old_runs_files(tmp_path):
    cfg, run_dir = config(tmp_path), tmp_path / "run"
    r = run_cli("train", str(cfg), "--run-dir", str(run_dir))
    assert r.returncode == 0, r.stderr
    assert {"step-00000002", "step-00000004"} <= set(step_dirs(run_dir))
    assert (run_dir / "checkpoints" / "best.json").is_file()
    old_steps = step_dirs(run_dir)
    config_before = (run_dir / "config.yaml").read_text()
    (run_dir / "notes.txt").write_text("mine")  # files the run did not write are never touched
    (run_dir / "tb" / "notes.txt").write_text("mine too")

    r = run_cli("train", str(cfg), "--run-dir", str(run_dir), "train.max_steps=2")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr, r.stderr
    assert str(run_dir) in lines[0] and "--resume auto" in lines[0] and "--overwrite" in lines[0]
    assert step_dirs(run_dir) == old_steps  # the old run is left as it was
    assert (run_dir / "config.yaml").read_text() == config_before

    r = run_cli("train", str(cfg), "--run-dir", str(run_dir), "--overwrite", "--resume", "auto")
    assert r.returncode == 2 and "--overwrite" in r.stderr and "Traceback" not in r.stderr, r.stderr

    r = run_cli("train", str(cfg), "--run-dir", str(run_dir), "--overwrite", "train.max_steps=2")
    assert r.returncode == 0, r.stderr
    new_steps = step_dirs(run_dir)
    assert "step-00000002" in new_steps and max(new_steps) == "step-00000002"  # the old run's step 4 is gone
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best["step"] <= 2 and best["name"] in new_steps
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]  # only the new run's log
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert (run_dir / "notes.txt").read_text() == "mine" and (run_dir / "tb" / "notes.txt").is_file()


def make_trainer(run_dir: Path, max_steps: int = 4) -> ds.Trainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return ds.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=None, max_steps=max_steps, progress="off",
        tensorboard=False, metrics=(), run_dir=run_dir, checkpoint_every_steps=2, keep_last=10,
    )  # fmt: skip


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(4)]


def test_trainer_refuses_a_run_dir_with_checkpoints_unless_resumed_or_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    first = make_trainer(run_dir)
    first.fit(batches())
    first.max_steps = 6
    first.fit(batches())  # the same Trainer continuing its own run is not a second run
    assert step_dirs(run_dir) == ["step-00000002", "step-00000004", "step-00000006"]
    with pytest.raises(FileExistsError, match=r"already holds .*resume='auto'.*overwrite=True"):
        make_trainer(run_dir, max_steps=2).fit(batches())
    assert step_dirs(run_dir) == ["step-00000002", "step-00000004", "step-00000006"]
    with pytest.raises(ValueError, match="overwrite"):
        make_trainer(run_dir).fit(batches(), resume="auto", overwrite=True)
    (run_dir / "notes.txt").write_text("mine")
    make_trainer(run_dir, max_steps=2).fit(batches(), overwrite=True)
    assert step_dirs(run_dir) == ["step-00000002"] and (run_dir / "notes.txt").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2
    resumed = make_trainer(run_dir, max_steps=4)
    resumed.fit(batches(), resume="auto")
    assert resumed.global_step == 4


def test_an_empty_or_unused_run_dir_is_fine(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: {}\n")  # `deepseek train` writes it before fit()
    make_trainer(run_dir, max_steps=2).fit(batches())
    assert step_dirs(run_dir) == ["step-00000002"]


@pytest.mark.parametrize("left", ["metrics.jsonl", "summary.json", "tb/events.out.tfevents.1.host"])
def test_a_run_that_left_only_logs_counts_as_a_run_and_a_refused_fit_leaves_the_model_alone(tmp_path, left):
    """A run killed before its first checkpoint (or run without checkpoints) left its logs: a new run
    would append to them. The refusal comes before fit() touches the model (device, dtype)."""
    run_dir = tmp_path / "run"
    (run_dir / left).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / left).write_text("{}\n")
    from deepseek.optim import MixedPrecision

    model = nn.Linear(3, 2)
    binding = MixedPrecision(torch.optim.SGD, bf16_params=["weight", "bias"], lr=0.1)  # fit() would cast them
    trainer = ds.Trainer(model, binding, max_steps=2, progress="off", tensorboard=False, metrics=(), run_dir=run_dir)
    with pytest.raises(FileExistsError, match=left.split("/")[0]):
        trainer.fit(batches())
    assert model.weight.dtype == torch.float32 and binding.bound is False
    make_trainer(run_dir, max_steps=2).fit(batches(), overwrite=True)
    assert not list((run_dir / "tb").glob("events.out.tfevents.1.host"))
