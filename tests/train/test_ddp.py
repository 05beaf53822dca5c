"""DDP with 2 gloo processes on 127.0.0.1: same weights on both ranks, equal to one process on the
full batch, and one gradient all-reduce per optimizer step under gradient accumulation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, write_yaml

NETWORK_ERRORS = (
    "EADDRINUSE",
    "Address already in use",
    "DistNetworkError",
    "RendezvousConnectionError",
    "Connection refused",
)

RECORDER = """
import json, os
import torch
from safetensors.torch import save_file
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

class Record:
    '''Counts DDP gradient all-reduces and saves each rank's final weights.'''
    def __init__(self, out: str):
        self.out, self.calls = out, 0
    def on_train_start(self, trainer):
        if trainer.dist.enabled:
            def hook(state, bucket):
                self.calls += 1
                return allreduce_hook(None, bucket)
            trainer.train_model.register_comm_hook(None, hook)
    def on_train_end(self, trainer):
        rank = trainer.dist.rank
        weights = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(weights, os.path.join(self.out, f"rank{rank}.safetensors"))
        with open(os.path.join(self.out, f"rank{rank}.json"), "w") as f:
            json.dump({"allreduce_calls": self.calls, "steps": trainer.global_step, "world": trainer.dist.world_size}, f)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_gloo_ranks_match_each_other_and_one_process(tmp_path, user_module):
    env = {**user_module("recorder", RECORDER), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    base = {
        "model": {"name": "mlp", "in_features": 32, "hidden": [64, 64], "num_classes": 4},
        "data": {"name": "synthetic", "num_samples": 640, "val_fraction": 0.2},  # 512 train samples
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "train": {"max_epochs": 2, "accumulate_grad_batches": 2, "seed": 7},
        "logging": {"every_steps": 5, "progress": "plain", "tensorboard": False},
        "checkpoint": {"every_minutes": None, "save_best": False},
    }
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    ddp_out.mkdir(), single_out.mkdir()
    ddp_cfg = write_yaml(
        tmp_path / "ddp.yaml",
        {
            **base,
            "data": {**base["data"], "batch_size": 16},
            # comm: false: no all-reduce hook of ds's, so that the recorder can register its own
            "train": {**base["train"], "strategy": {"name": "ddp", "comm": False}},
            "callbacks": [{"name": "recorder:Record", "out": str(ddp_out)}],
        },
    )
    one_cfg = write_yaml(
        tmp_path / "one.yaml",
        {
            **base,
            "data": {**base["data"], "batch_size": 32},
            "callbacks": [{"name": "recorder:Record", "out": str(single_out)}],
        },
    )

    launch = ("launch", "--nproc", "2", str(ddp_cfg), "--run-dir", str(tmp_path / "run-ddp"))
    r = run_cli(*launch, env=env)
    if r.returncode != 0 and any(s in r.stdout + r.stderr for s in NETWORK_ERRORS):
        r = run_cli(*launch, env=env)  # a port race in torchrun's standalone rendezvous: once more
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = run_cli("train", str(one_cfg), "--run-dir", str(tmp_path / "run-one"), env=env)
    assert r.returncode == 0, r.stderr

    r0, r1 = (load_file(ddp_out / f"rank{i}.safetensors") for i in (0, 1))
    single = load_file(single_out / "rank0.safetensors")
    for k in single:
        assert torch.equal(r0[k], r1[k]), f"{k}: ranks differ"
        torch.testing.assert_close(r0[k], single[k], rtol=0, atol=1e-5, msg=f"{k}: DDP != one process")
    # 512 samples / (2 ranks * 16) = 16 micro-batches a rank an epoch = 8 optimizer steps; 2 epochs.
    info = [json.loads((ddp_out / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(i["world"] == 2 and i["steps"] == 16 for i in info)
    assert [i["allreduce_calls"] for i in info] == [16, 16], "all-reduce ran on non-final micro-steps"
    # Rank 0 alone writes the run directory.
    assert (tmp_path / "run-ddp" / "final" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "run-ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
