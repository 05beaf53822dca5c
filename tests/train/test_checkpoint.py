"""Atomic checkpoints: partial or corrupt ones are skipped, pruning keeps the last K and the best."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from deepseek.train.checkpoint import CheckpointError, CheckpointManager, load_checkpoint, verify


def save(mgr: CheckpointManager, step: int, best: bool = False):
    torch.manual_seed(step)
    model = nn.Linear(4, 2)
    state = {"global_step": step, "epoch": 0, "rng": torch.get_rng_state(), "nested": {"t": (1, 2.5, None)}}
    return mgr.save(step, model, state, best={"monitor": "val/loss", "value": 1.0 / step} if best else None), model


def test_round_trip_with_weights_only(tmp_path):
    mgr = CheckpointManager(tmp_path)
    path, model = save(mgr, 7)
    other = nn.Linear(4, 2)
    state = load_checkpoint(path, other)  # torch.load(weights_only=True) inside
    assert state["global_step"] == 7 and state["nested"]["t"] == (1, 2.5, None)
    assert torch.equal(other.weight, model.weight)


def test_keeps_last_k_and_the_best(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4, 5):
        save(mgr, step, best=step == 2)
    assert [p.name for p in mgr.checkpoints()] == ["step-00000002", "step-00000004", "step-00000005"]
    assert mgr.best().name == "step-00000002"


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_meta", "missing_file"])
def test_latest_valid_skips_a_damaged_newest_checkpoint(tmp_path, damage):
    mgr = CheckpointManager(tmp_path, keep_last=5)
    save(mgr, 1)
    newest, _ = save(mgr, 2)
    target = newest / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "no_meta":
        (newest / "meta.json").unlink()
    else:
        (newest / "state.pt").unlink()
    with pytest.raises(CheckpointError):
        verify(newest)
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        assert mgr.latest_valid().name == "step-00000001"


def test_sigkill_during_a_write_leaves_the_previous_checkpoint_valid(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, torch, torch.nn as nn
        from deepseek.train.checkpoint import CheckpointManager
        mgr = CheckpointManager({str(tmp_path)!r})
        mgr.save(1, nn.Linear(4, 2), {{"global_step": 1}})
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)  # after the weights and state, before meta.json and the rename
        torch.save = dying_save
        mgr.save(2, nn.Linear(4, 2), {{"global_step": 2}})
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    assert list(tmp_path.glob(".tmp-step-00000002-*")), "the write should have been cut off mid-way"
    mgr = CheckpointManager(tmp_path)
    assert mgr.latest_valid().name == "step-00000001"
    save(mgr, 3)  # the next save clears the debris
    assert not list(tmp_path.glob(".tmp-step-*"))



def test_final_validation_that_improves_marks_the_checkpoint_already_saved_at_that_step_best(tmp_path):
    """The last step's checkpoint is written on schedule before the run's final validation; when that
    validation improves, best.json must name it (it was skipped: the step had been saved already)."""
    from deepseek.train.trainer import Trainer

    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8)]  # 8 batches: step 4 is mid-epoch
    model = nn.Linear(4, 2)
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.05), max_steps=4, metrics=[],
        val_every_epochs=None, val_every_steps=3,  # validations at step 3 and, at the end, at step 4
        checkpoint_every_steps=4, checkpoint_every_minutes=None,  # step 4's checkpoint is due before that
        run_dir=tmp_path, progress="off", tensorboard=False,
    )  # fmt: skip
    trainer.fit(batches, batches)  # convex, small steps: the validation loss falls from step 3 to step 4
    assert trainer.best_checkpoint == "step-00000004"
    best = CheckpointManager(tmp_path / "checkpoints").best()
    assert best.name == "step-00000004"
    # and that checkpoint's own state knows it (a resumed run must not take a worse value for an improvement)
    state = torch.load(best / "state.pt", weights_only=True)
    assert state["best"]["checkpoint"] == "step-00000004"
    assert state["best"]["best"] == trainer.best.best == state["last_val_metrics"]["val/loss"]
