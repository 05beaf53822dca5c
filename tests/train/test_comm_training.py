"""``parallel.comm`` in training (issue 18), 2 gloo ranks under ``deepseek launch``: PowerSGD with error feedback
logs ``comm/*`` (fewer bytes than fp32) and resumes exactly (its per-rank state is in the checkpoint)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, write_yaml
from tests.train.test_ddp import NETWORK_ERRORS

ENV = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def _launch(*args: str):
    r = run_cli("launch", "--nproc", "2", *args, env=ENV)
    if r.returncode != 0 and any(s in r.stdout + r.stderr for s in NETWORK_ERRORS):
        r = run_cli("launch", "--nproc", "2", *args, env=ENV)  # a port race in torchrun's standalone rendezvous
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
@pytest.mark.distributed
def test_powersgd_logs_comm_metrics_and_resumes_exactly(tmp_path):
    cfg = write_yaml(tmp_path / "psgd.yaml", {
        "model": {"name": "mlp", "in_features": 32, "hidden": [64, 64], "num_classes": 4},
        "data": {"name": "synthetic", "num_samples": 512, "val_fraction": 0.25, "batch_size": 16},
        "optim": {"name": "adamw", "lr": 0.01},
        "train": {"max_steps": 8, "seed": 3, "val_every_epochs": None},
        "parallel": {"comm": {"topology": "hybrid", "ring_size": 1, "compression": "powersgd", "powersgd_rank": 2,
                              "powersgd_start_iter": 2}},
        "logging": {"every_steps": 2, "progress": "plain", "tensorboard": False},
        "checkpoint": {"every_steps": 4, "every_minutes": None, "save_best": False, "keep_last": 5},
    })  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _launch(str(cfg), "--run-dir", str(whole))
    step4 = whole / "checkpoints" / "step-00000004"
    state = torch.load(step4 / "state.pt", weights_only=True)
    assert len(state["comm_ranks"]) == 2  # each rank's error feedback and PowerSGD matrices
    _launch(str(cfg), "--run-dir", str(resumed), "--resume", str(step4))

    a, b = (load_file(d / "final" / "model.safetensors") for d in (whole, resumed))
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: the resumed run differs from the uninterrupted one"
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    comm = [r for r in records if "comm/bytes" in r]
    assert comm, records[:3]
    last = comm[-1]  # compressing by then: low-rank factors instead of whole gradients
    assert 0 < last["comm/seconds"] and 0 < last["comm/share"] <= 1
    assert 0 < last["comm/bytes"] < last["comm/bytes_fp32"] / 4, last
