"""Exact resume: a run SIGKILLed mid-epoch and resumed ends bitwise equal to an uninterrupted one
(also with the ``deepseek.optim.MixedPrecision`` optimizer under a warm-up schedule)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, write_yaml

KILLER = """
import os, signal

import torch
from deepseek.optim import MixedPrecision

def mixed_adamw(params, lr: float = 1e-3):
    '''AdamW over fp32 masters: simple_cnn's convolutions stored in fp16, its head in bf16.'''
    del params  # MixedPrecision takes the model when the Trainer binds it
    return MixedPrecision(torch.optim.AdamW, fp16_params=["features.0.*", "features.3.*", "features.7.*"],
                          bf16_params=["head.1.*"], loss_scale="dynamic", lr=lr)

class KillAtStep:
    '''SIGKILLs its own process after optimizer step `step` when DS_TEST_KILL=1.'''
    def __init__(self, step: int):
        self.step = step
    def on_step_end(self, trainer):
        if trainer.global_step == self.step and os.environ.get("DS_TEST_KILL") == "1":
            os.kill(os.getpid(), signal.SIGKILL)
"""


OPTIMIZERS = {"adamw": "adamw", "mixed_precision": "killer:mixed_adamw"}


def config(tmp_path: Path, num_workers: int, optimizer: str = "adamw") -> Path:
    return write_yaml(
        tmp_path / "cfg.yaml",
        {
            "model": {"name": "simple_cnn", "width": 8, "dropout": 0.3},  # dropout: the RNG state matters
            "data": {
                "name": "digits",
                "batch_size": 64,
                "num_workers": num_workers,
                # random augmentations in the workers: resume must replay them exactly
                "transforms": [
                    {"type": "RandomRotation", "params": {"degrees": 15}},
                    {"type": "GaussianNoise", "params": {"sigma": 0.05}},
                ],
            },
            "optim": {"name": OPTIMIZERS[optimizer], "lr": 3e-3},
            "scheduler": {"name": "warmup_cosine", "warmup_steps": 10},
            "train": {"max_epochs": 2, "ema_decay": 0.9, "grad_clip_norm": 1.0, "seed": 3},
            "checkpoint": {"every_steps": 5, "keep_last": 2, "monitor": "val/accuracy", "mode": "max"},
            "logging": {"every_steps": 4, "progress": "plain"},
            # step 33 is the 10th batch of epoch 1 (23 batches an epoch); the last checkpoint is at 30
            "callbacks": [{"name": "killer:KillAtStep", "step": 33}],
        },
    )


@pytest.mark.slow
# adamw with workers, and in-process loading with mixed precision: each dimension once (the suite's time budget)
@pytest.mark.parametrize(("num_workers", "optimizer"), [(2, "adamw"), (0, "mixed_precision")])
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, user_module, num_workers, optimizer):
    env = user_module("killer", KILLER)
    cfg = config(tmp_path, num_workers, optimizer)
    straight, killed = tmp_path / "straight", tmp_path / "killed"

    r = run_cli("train", str(cfg), "--run-dir", str(straight), env=env)
    assert r.returncode == 0, r.stderr

    r = run_cli("train", str(cfg), "--run-dir", str(killed), env={**env, "DS_TEST_KILL": "1"})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    assert not (killed / "final").exists()
    steps = sorted(p.name for p in (killed / "checkpoints").glob("step-*"))
    assert steps[-1] == "step-00000030", steps

    r = run_cli("train", str(cfg), "--run-dir", str(killed), "--resume", "auto", env=env)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "at step 30, epoch 1" in r.stdout

    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    if optimizer == "mixed_precision":  # the stored dtypes show the optimizer really was in use
        assert a["features.0.weight"].dtype == torch.float16 and a["head.1.weight"].dtype == torch.bfloat16
    for k in a:
        assert a[k].equal(b[k]), f"{k} differs after resume"
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (straight, killed))
    assert sa["val"] == sb["val"] and sa["steps"] == sb["steps"] == 46

    # The killed run's log stays readable: every line parses and the resume is marked.
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 30}.items() <= records[
        [i for i, r in enumerate(records) if r.get("event")][0]
    ].items()
