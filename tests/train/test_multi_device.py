"""Multi-device correctness on a CPU-only machine: validation reduces on the NCCL group's device,
each rank binds the GPU of its LOCAL_RANK, and ``Trainer.fit`` leaves a process group it created.

What a CPU machine lacks is stood in for: GPUs by monkeypatched ``torch.cuda`` functions, NCCL by an
``all_reduce`` that rejects tensors off the group's device (see ``standin_accelerator.py``), and
torchrun's rendezvous by a one-rank gloo group; the last test runs a real 2-rank torchrun.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import deepseek as ds
from deepseek.config import load_config
from deepseek.train.build import build_run
from deepseek.train.distributed import init_distributed, resolve_device
from deepseek.train.evaluate import evaluate
from deepseek.train.metrics import Accuracy
from tests import process_tree
from tests.train.standin_accelerator import STANDIN, StandInAccelerator, nccl_like_all_reduce
from tests.train.test_ddp import NETWORK_ERRORS

CUDA1 = torch.device("cuda", 1)


@pytest.fixture
def rank1_of_2(monkeypatch):
    """torchrun's environment for rank 1 of 2; ``init_process_group`` records its keyword arguments."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DS_DIST_BACKEND", raising=False)
    inits: list[dict] = []
    monkeypatch.setattr(dist, "rendezvous", lambda url, *args, **kwargs: iter([(dist.HashStore(), 1, 2)]))
    monkeypatch.setattr(dist, "init_process_group", lambda *args, **kwargs: inits.append(kwargs))
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    return inits


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with 2 CUDA devices; returns the devices ``torch.cuda.set_device`` was given."""
    bound: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", bound.append)
    return bound


def tiny_classifier() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """A linear classifier 5 -> 3 and three batches of (x (N, 5), y (N,)) with N = 6, 6, 4."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (6, 6, 4)]
    return nn.Linear(5, 3), batches


def cross_entropy_step(model: nn.Module, batch):
    x, y = batch
    out = model(x)
    return nn.functional.cross_entropy(out, y), out, y


# ------------------------------------------------------------------ 1. validation under NCCL
def test_validation_sums_are_reduced_on_the_nccl_groups_device(rank1_of_2, monkeypatch):
    model, batches = tiny_classifier()
    alone = evaluate(model, batches, cross_entropy_step, [Accuracy()], device=torch.device("cpu"),
                     autocast=contextlib.nullcontext)  # fmt: skip
    assert alone["val/accuracy"] > 0  # else halving it below would prove nothing

    # The other rank saw as many samples, with zero loss and none right: [sum, count] -> [0, count].
    seen: list[torch.device] = []
    other_rank = lambda v: torch.stack([torch.zeros_like(v[0]), v[1]])  # noqa: E731
    monkeypatch.setattr(dist, "all_reduce", nccl_like_all_reduce(STANDIN, other_rank, seen))
    monkeypatch.setenv("DS_DIST_BACKEND", "nccl")
    info = init_distributed(STANDIN)  # the rank's GPU; the model itself stays on the CPU here
    with StandInAccelerator():
        both = evaluate(model, batches, cross_entropy_step, [Accuracy()], device=torch.device("cpu"),
                        autocast=contextlib.nullcontext, dist=info)  # fmt: skip

    assert seen == [STANDIN, STANDIN]  # the loss sums, then the accuracy state
    assert both["val/loss"] == pytest.approx(alone["val/loss"] / 2, rel=1e-12)
    assert both["val/accuracy"] == pytest.approx(alone["val/accuracy"] / 2, rel=1e-12)


# ------------------------------------------------------------------ 2. device binding
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_each_rank_binds_the_gpu_of_its_local_rank(rank1_of_2, two_gpus, device):
    cfg = load_config(None, data={
        "model": {"name": "mlp", "in_features": 4, "hidden": [8], "num_classes": 2},
        "data": {"name": "synthetic", "num_samples": 32, "val_fraction": 0.25, "batch_size": 4, "num_workers": 0},
        "train": {"max_steps": 1, "device": device},
        "logging": {"progress": "off", "tensorboard": False},
    })  # fmt: skip
    run = build_run(cfg)
    assert run.trainer.device == CUDA1
    assert two_gpus == [CUDA1]
    assert [(i.get("backend"), i.get("device_id")) for i in rank1_of_2] == [("nccl", CUDA1)]


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0", torch.device("cuda"), torch.device("cuda", 0)])
def test_under_torchrun_every_cuda_spelling_means_the_gpu_of_the_local_rank(rank1_of_2, two_gpus, device):
    """``cuda:0`` in a config shared by all ranks would put every rank on GPU 0 (NCCL: duplicate GPU)."""
    assert resolve_device(device) == CUDA1
    assert ds.Trainer(nn.Linear(2, 2), device=device).device == CUDA1


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0", torch.device("cuda")])
def test_with_one_visible_gpu_per_rank_each_rank_uses_cuda_0(rank1_of_2, two_gpus, monkeypatch, device):
    """CUDA_VISIBLE_DEVICES / SLURM --gpus-per-task=1: rank 1 sees its own GPU as cuda:0, not cuda:1."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(device) == torch.device("cuda", 0)


def test_one_process_keeps_an_explicit_index_and_fills_a_missing_one(two_gpus, monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert resolve_device("cuda:1") == CUDA1
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")


# ------------------------------------------------------------------ 3. process-group ownership
@pytest.fixture
def torchrun_group(monkeypatch):
    """torchrun's rendezvous, here answered with a real one-rank gloo group whatever is asked;
    returns the barriers entered. Destroys any group a failing test leaves behind."""
    monkeypatch.setenv("WORLD_SIZE", "2")  # tells init_distributed that torchrun started this process
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("DS_DIST_BACKEND", raising=False)
    real_init, real_barrier = dist.init_process_group, dist.barrier
    barriers: list[int] = []

    def one_rank_gloo(*args, **kwargs) -> None:
        real_init("gloo", store=dist.HashStore(), rank=0, world_size=1)

    def counting_barrier(*args, **kwargs) -> None:
        barriers.append(1)
        real_barrier(*args, **kwargs)

    monkeypatch.setattr(dist, "rendezvous", lambda url, *args, **kwargs: iter([(dist.HashStore(), 0, 1)]))
    monkeypatch.setattr(dist, "init_process_group", one_rank_gloo)
    monkeypatch.setattr(dist, "barrier", counting_barrier)
    yield barriers
    if dist.is_initialized():
        dist.destroy_process_group()


def small_fit(step_fn=None) -> dict:
    model, batches = tiny_classifier()
    trainer = ds.Trainer(model, max_epochs=1, device="cpu", metrics=(), progress="off", tensorboard=False,
                         step_fn=step_fn)  # fmt: skip
    return trainer.fit(batches, batches[:1])


def test_fit_tears_down_the_group_it_created_after_a_barrier(torchrun_group):
    small_fit()
    assert not dist.is_initialized()
    assert torchrun_group == [1]


def test_fit_that_fails_tears_down_its_group_without_a_barrier(torchrun_group):
    def failing_step(model, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        small_fit(failing_step)
    assert not dist.is_initialized()
    assert torchrun_group == []  # a barrier would wait for ranks that may have died


def test_fit_leaves_a_group_the_user_created(torchrun_group):
    dist.init_process_group()  # the user's own (the one-rank stand-in)
    small_fit()
    assert dist.is_initialized()
    assert torchrun_group == []


TORCHRUN_SCRIPT = """
import faulthandler, os, sys
faulthandler.dump_traceback_later(90, exit=True)  # a hung rank prints where it hangs, and exits
import torch, torch.distributed as dist
import deepseek as ds

def fit(run_dir):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    g = torch.Generator().manual_seed(int(os.environ["RANK"]))
    batches = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    trainer = ds.Trainer(model, max_epochs=1, device="cpu", progress="off", tensorboard=False, run_dir=run_dir)
    summary = trainer.fit(batches, batches[:2])
    assert trainer.train_model is model, "fit() kept DDP (and so the group) alive past its end"
    return summary

# A group the user created stays theirs ...
dist.init_process_group("gloo")
assert fit(None)["world_size"] == 2
assert dist.is_initialized(), "fit() tore down the user's process group"
dist.destroy_process_group()
# ... one fit() created, it tears down (rank 0 writes the run directory meanwhile), and a second
# fit() creates a fresh one (under new rendezvous keys: the old ones hold stale addresses).
for run_dir in (sys.argv[1], None):
    assert fit(run_dir)["world_size"] == 2
    assert not dist.is_initialized(), "fit() left the process group it created"
open(os.path.join(sys.argv[2], "rank" + os.environ["RANK"] + ".ok"), "w").close()
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_python_fit_under_torchrun_exits_cleanly_on_both_ranks(tmp_path):
    script = tmp_path / "fit_script.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    # --standalone: torchrun's rendezvous binds port 0, so the OS picks a free port.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(script), str(tmp_path / "run"), str(tmp_path)]  # fmt: skip
    env = {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def launch() -> subprocess.CompletedProcess[str]:
        # a timeout kills torchrun and its ranks (which have sessions of their own)
        try:
            return process_tree.run(cmd, 120, cwd=tmp_path, env={**os.environ, **env})
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"torchrun hung for 120 s:\n{((e.output or '') + (e.stderr or ''))[-4000:]}")

    r = launch()
    if r.returncode != 0 and any(s in r.stdout + r.stderr for s in NETWORK_ERRORS):
        r = launch()  # a port race in torchrun's standalone rendezvous: once more
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "terminate called" not in out, out[-4000:]
    assert sorted(p.name for p in tmp_path.glob("*.ok")) == ["rank0.ok", "rank1.ok"]  # both got to the end
    assert (tmp_path / "run" / "summary.json").is_file()


def test_validate_across_ranks_without_a_group_says_why(monkeypatch):
    """After fit() left the group it created, trainer.dist still describes 2 ranks: validate() must say
    what is missing, not fail inside a collective."""
    from deepseek.train.distributed import DistInfo

    model, batches = tiny_classifier()
    trainer = ds.Trainer(model, metrics=[], progress="off")
    trainer.dist = DistInfo(rank=0, local_rank=0, world_size=2)
    with pytest.raises(RuntimeError, match=r"validate\(\) over 2 ranks needs a process group"):
        trainer.validate(batches)
