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


# ------------------------------------------------------------------ damaged checkpoints fall back on resume
class NotAllowedInStatePt:
    """An arbitrary object: ``torch.load(weights_only=True)`` must refuse to unpickle it."""


def _rewrite_meta(ckpt, **changes) -> None:
    import json

    meta = json.loads((ckpt / "meta.json").read_text())
    meta.update(changes)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def _replace_file_keeping_meta_valid(ckpt, name: str, data: bytes) -> None:
    """Replace a checkpoint file and record its true size and SHA-256, so that only loading it can fail."""
    import hashlib
    import json

    (ckpt / name).write_bytes(data)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "meta.json").write_text(json.dumps(meta))


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _damage(ckpt, how: str) -> None:
    import struct

    if how == "files_list":
        _rewrite_meta(ckpt, files=[])
    elif how == "files_null":
        _rewrite_meta(ckpt, files=None)
    elif how == "files_int_entry":
        _rewrite_meta(ckpt, files={"model.safetensors": 5, "state.pt": 7})
    elif how == "files_empty_truncated_state":
        _rewrite_meta(ckpt, files={})
        state = ckpt / "state.pt"
        state.write_bytes(state.read_bytes()[:100])
    elif how == "state_empty_dict":
        _replace_file_keeping_meta_valid(ckpt, "state.pt", _torch_bytes({}))
    elif how == "huge_safetensors_header":
        _replace_file_keeping_meta_valid(ckpt, "model.safetensors", struct.pack("<Q", 2**62) + b"{}")
    elif how == "pickle_payload":
        _replace_file_keeping_meta_valid(ckpt, "state.pt", _torch_bytes({"x": NotAllowedInStatePt()}))
    else:
        raise AssertionError(how)


def _linear_trainer(run_dir, max_steps: int, callbacks=()):
    from deepseek.train.trainer import Trainer

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    return Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), max_epochs=None, max_steps=max_steps,
        metrics=(), run_dir=run_dir, checkpoint_every_steps=2, checkpoint_every_minutes=None, keep_last=10,
        progress="off", tensorboard=False, callbacks=callbacks,
    )  # fmt: skip


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(3)]


class _StartStep:
    """Records the step a fit() starts from (after any resume)."""

    def on_train_start(self, trainer) -> None:
        self.step = trainer.global_step


DAMAGES = [
    "files_list", "files_null", "files_int_entry", "files_empty_truncated_state",
    "state_empty_dict", "huge_safetensors_header", "pickle_payload",
]  # fmt: skip


@pytest.mark.parametrize("how", DAMAGES)
def test_resume_skips_a_damaged_newest_checkpoint_and_matches_an_uninterrupted_run(tmp_path, how):
    straight = _linear_trainer(tmp_path / "straight", max_steps=6)
    straight.fit(_batches())

    first = _linear_trainer(tmp_path / "run", max_steps=4)  # checkpoints at steps 2 and 4
    first.fit(_batches())
    ckpts = CheckpointManager(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts.checkpoints()] == ["step-00000002", "step-00000004"]
    _damage(ckpts.checkpoints()[-1], how)

    start = _StartStep()
    resumed = _linear_trainer(tmp_path / "run", max_steps=6, callbacks=[start])
    with pytest.warns(UserWarning, match="skipping checkpoint .*step-00000004"):
        resumed.fit(_batches(), resume="auto")
    assert start.step == 2
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


# ------------------------------------------------------------------ disk full, atomic final weights
def _enospc_after(limit: int):
    """A stand-in for ``torch.save`` whose file runs out of space after ``limit`` bytes."""
    import errno
    import io

    real_save = torch.save

    class FullDisk(io.RawIOBase):
        def __init__(self, f) -> None:
            self.f, self.written = f, 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            if self.written + len(b) > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(b)
            return self.f.write(b)

    def save(obj, f, *args, **kwargs):
        return real_save(obj, FullDisk(f), *args, **kwargs)

    return save


def test_disk_full_during_a_checkpoint_says_so_removes_the_partial_one_and_resume_works(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _linear_trainer(run_dir, max_steps=2).fit(_batches())  # step-00000002
    monkeypatch.setattr(torch, "save", _enospc_after(300))  # the state of step 4 does not fit
    with pytest.raises(OSError) as caught:
        _linear_trainer(run_dir, max_steps=4).fit(_batches(), resume="auto")
    message = str(caught.value)
    assert "disk full" in message and "No space left on device" in message and "\n" not in message, message
    from deepseek.train.checkpoint import DiskFullError

    assert isinstance(caught.value, DiskFullError)
    ckpt_dir = run_dir / "checkpoints"
    assert not list(ckpt_dir.glob(".tmp-step-*"))
    assert [p.name for p in CheckpointManager(ckpt_dir).checkpoints()] == ["step-00000002"]
    verify(ckpt_dir / "step-00000002")
    monkeypatch.undo()  # space freed: the same resume now runs to the end
    resumed = _linear_trainer(run_dir, max_steps=4)
    resumed.fit(_batches(), resume="auto")
    assert resumed.global_step == 4 and (ckpt_dir / "step-00000004").is_dir()


def test_final_weights_are_written_atomically(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    import deepseek.train.checkpoint as checkpoint

    run_dir = tmp_path / "run"
    _linear_trainer(run_dir, max_steps=2).fit(_batches())
    final = run_dir / "final" / "model.safetensors"
    before = final.read_bytes()
    real_save_model = checkpoint.save_model

    def full_disk(model, filename, *args, **kwargs):
        real_save_model(model, filename, *args, **kwargs)
        if Path(filename).parent.name != "final":  # the checkpoints still fit
            return
        with open(filename, "r+b") as f:  # what a write cut off by a full disk leaves
            f.truncate(20)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_model", full_disk)
    trainer = _linear_trainer(run_dir, max_steps=4)
    trainer.ckpt_every_steps = None  # only the final weights are written
    with pytest.raises(OSError, match="No space left"):
        trainer.fit(_batches(), resume="auto")
    assert (run_dir / "checkpoints" / "step-00000004").is_dir()  # the failure came at the final weights
    assert final.read_bytes() == before
    assert sorted(p.name for p in final.parent.iterdir()) == ["model.safetensors"]
