"""Sharded checkpoints on gloo ranks: exact after SIGKILL under torchrun (2 ranks, ZeRO-3), and resumable
at another layout (FSDP -> DDP, 2 -> 1 process, 4 -> 2 ranks) with the same weights, optimizer state and
scheduler, for sharded (DCP) and full-state checkpoints alike."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deepseek.train.fsdp import FSDP
from tests import process_tree
from tests.conftest import REPO
from tests.gloo_ranks import run_ranks
from tests.train.test_sharded_checkpoint import make_trainer, tiny_gpt2, token_batches

STEPS = 8  # one epoch of 8 batches; checkpoints every 3 steps
ZERO3 = {"name": "fsdp", "zero_stage": 3}

SCRIPT = """
import os, signal, sys
from pathlib import Path

from tests.train.test_sharded_checkpoint import make_trainer, tiny_gpt2, token_batches

class KillAtStep:
    '''SIGKILLs this rank after optimizer step DS_TEST_KILL_AT.'''
    def on_step_end(self, trainer):
        if trainer.global_step == int(os.environ.get("DS_TEST_KILL_AT", "0")):
            os.kill(os.getpid(), signal.SIGKILL)

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
batches = [(x[rank::world], y[rank::world]) for x, y in token_batches(8, rows=2 * world)]
trainer = make_trainer(tiny_gpt2(), Path(sys.argv[1]), 8, strategy={"name": "fsdp", "zero_stage": 3},
                       callbacks=[KillAtStep()])
trainer.fit(batches, resume=sys.argv[2] if len(sys.argv) > 2 else None)
"""


def _torchrun(script: Path, *args: str, kill_at: int | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1",
           "DS_TEST_KILL_AT": str(kill_at or 0)}  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), *args]
    return process_tree.run(cmd, 240, env=env, cwd=REPO)


@pytest.mark.slow
@pytest.mark.distributed
def test_sigkill_then_resume_of_a_sharded_zero3_run_is_bitwise_identical(tmp_path):
    script = tmp_path / "train_ranks.py"
    script.write_text(SCRIPT)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = _torchrun(script, str(straight))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _torchrun(script, str(killed), kill_at=5)
    assert r.returncode != 0 and f"Signal {int(signal.SIGKILL)} (SIGKILL)" in r.stderr, r.stderr[-3000:]
    assert not (killed / "final").exists()
    assert [p.name for p in (killed / "checkpoints").glob("step-*")] == ["step-00000003"]
    r = _torchrun(script, str(killed), "auto")
    assert r.returncode == 0, r.stderr[-3000:]

    ckpt = killed / "checkpoints" / "step-00000006"
    meta = __import__("json").loads((ckpt / "meta.json").read_text())
    assert meta["sharded"] == {"world_size": 2, "strategy": "fsdp", "zero_stage": 3, "mesh": [2]}
    assert {"shards/__0_0.distcp", "shards/__1_0.distcp"} <= set(meta["files"])  # each rank wrote its own
    assert not (ckpt / "model.safetensors").exists()
    a, b = (load_file(run / "final" / "model.safetensors") for run in (straight, killed))  # one file each
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), [k for k in a if not a[k].equal(b[k])]


# ------------------------------------------------------------------------------ another layout
def _full_state(trainer) -> dict:
    """Model and optimizer state in full (gathered) tensors keyed by parameter name, and the scheduler's."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model, optim = get_state_dict(trainer.model, trainer.optimizer, options=StateDictOptions(full_state_dict=True))
    return {"model": model, "optimizer": optim, "scheduler": trainer.scheduler.state_dict()}


def _assert_same_state(got: dict, expected: dict) -> None:
    torch.testing.assert_close(got["model"], expected["model"], atol=0, rtol=0)
    torch.testing.assert_close(got["optimizer"]["state"], expected["optimizer"]["state"], atol=0, rtol=0)
    assert got["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
    assert got["scheduler"] == expected["scheduler"]


def _batches(rank: int, world: int) -> list:
    return [(x[rank::world], y[rank::world]) for x, y in token_batches(STEPS, rows=4)]


class CountingZeRO3(FSDP):
    """ZeRO-3 that counts how often the full model and optimizer state are gathered."""

    def __init__(self) -> None:
        super().__init__(zero_stage=3)
        self.gathered = {"model": 0, "optimizer": 0}

    def model_state_dict(self, model):
        self.gathered["model"] += 1
        return super().model_state_dict(model)

    def optimizer_state_dict(self, model, optimizer):
        self.gathered["optimizer"] += 1
        return super().optimizer_state_dict(model, optimizer)


def _write_leg(rank: int, world: int, run_dir: str, sharded: bool | str) -> dict:
    """Train 3 steps under ZeRO-3 (checkpoint at step 3; ``sharded="async"``: written asynchronously);
    rank 0 saves the full state it ended with. Returns how often the full state was gathered."""
    strategy = CountingZeRO3()
    trainer = make_trainer(tiny_gpt2(), Path(run_dir), 3, strategy=strategy, sharded_checkpoint=bool(sharded),
                           async_checkpoint=sharded == "async")  # fmt: skip
    trainer.fit(_batches(rank, world))
    expected = _full_state(trainer)  # a collective: every rank gathers, rank 0 keeps it
    if rank == 0:
        torch.save(expected, Path(run_dir) / "expected.pt")
    return strategy.gathered


def _read_leg(rank: int, world: int, run_dir: str, strategy) -> list:
    """Resume the step-3 checkpoint under ``strategy``, compare the state, then continue 2 steps."""
    ckpt = Path(run_dir) / "checkpoints" / "step-00000003"
    trainer = make_trainer(tiny_gpt2(seed=1), Path(run_dir) / f"again-{world}", 5, strategy=strategy)
    trainer.max_steps = 3  # load only: the first fit ends at once
    trainer.fit(_batches(rank, world), resume=ckpt)
    loaded, position = _full_state(trainer), (trainer.global_step, trainer.epoch, trainer.batch_in_epoch)
    if rank == 0:
        _assert_same_state(loaded, torch.load(Path(run_dir) / "expected.pt", weights_only=True))
    trainer.max_steps = 5
    trainer.fit(_batches(rank, world), resume=ckpt)  # a short continuation from the same checkpoint
    return [*position, trainer.global_step]


def _write_then_ddp(rank: int, world: int, run_dir: str, sharded: bool) -> list:
    gathered = _write_leg(rank, world, run_dir, sharded)
    return [gathered["model"], gathered["optimizer"], *_read_leg(rank, world, run_dir, "ddp")]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("sharded", [True, False, "async"], ids=["sharded", "full-state", "async-sharded"])
def test_a_zero3_checkpoint_resumes_under_ddp_and_on_one_process(tmp_path, sharded):
    run_dir = tmp_path / "run"
    results = run_ranks(_write_then_ddp, 2, 2, str(run_dir), sharded, timeout_s=240)
    # the full state is gathered for final/ only (sharded), or also for the checkpoint (full-state);
    # at the same world size the data position carries over (step 3, epoch 0, batch 3)
    gathers = [1, 0] if sharded else [2, 1]
    assert results == {0: [*gathers, 3, 0, 3, 5], 1: [*gathers, 3, 0, 3, 5]}
    assert (run_dir / "checkpoints" / "step-00000003" / "model.safetensors").exists() != bool(sharded)

    with pytest.warns(UserWarning, match=r"written at world size 2 at world size 1: the data position does not "
                                         r"carry over, epoch 0 restarts from its first batch"):  # fmt: skip
        position_and_end = _read_leg(0, 1, str(run_dir), "single_device")
    assert position_and_end == [3, 0, 0, 5]  # step 3 kept, the epoch's order from its beginning


def _read_at_two(rank: int, world: int, run_dir: str) -> list:
    return _read_leg(rank, world, run_dir, ZERO3)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_sharded_checkpoint_of_4_ranks_resumes_on_2(tmp_path):
    run_dir = tmp_path / "run"
    run_ranks(_write_leg, 4, 4, str(run_dir), True, timeout_s=240)
    results = run_ranks(_read_at_two, 2, 2, str(run_dir), timeout_s=240)
    assert results == {0: [3, 0, 0, 5], 1: [3, 0, 0, 5]}
