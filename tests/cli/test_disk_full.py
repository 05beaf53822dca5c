"""A full disk mid-run: one ``error:`` line saying so (exit 1), no partial checkpoint, resume works."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, write_yaml

FILL_DISK = """
import errno, os
import torch

class FillDiskAt:
    '''From optimizer step `step` on, every torch.save fails part-way with ENOSPC when DS_TEST_FULL=1.'''
    def __init__(self, step: int):
        self.step = step
    def on_step_end(self, trainer):
        if trainer.global_step != self.step or os.environ.get("DS_TEST_FULL") != "1":
            return
        real_save = torch.save
        def save(obj, f, *args, **kwargs):
            f.write(b"x" * 100)  # some bytes land, then the device is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        torch.save = save
"""


@pytest.mark.slow
def test_cli_disk_full_is_one_line_and_resume_continues(tmp_path, user_module):
    env = user_module("filldisk", FILL_DISK)
    cfg = write_yaml(
        tmp_path / "cfg.yaml",
        {
            "model": {"name": "simple_cnn", "width": 4},
            "data": {"name": "digits", "batch_size": 64},
            "train": {"max_steps": 4, "val_every_epochs": None},
            "checkpoint": {"every_steps": 2},
            "logging": {"progress": "plain", "tensorboard": False},
            "callbacks": [{"name": "filldisk:FillDiskAt", "step": 3}],
        },
    )
    run_dir = tmp_path / "run"
    r = run_cli("train", str(cfg), "--run-dir", str(run_dir), env={**env, "DS_TEST_FULL": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: disk full") and "No space left" in lines[0], r.stderr
    assert not list((run_dir / "checkpoints").glob(".tmp-step-*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-00000002"]

    r = run_cli("train", str(cfg), "--run-dir", str(run_dir), "--resume", "auto", env=env)
    assert r.returncode == 0, r.stderr
    assert "at step 2" in r.stdout and (run_dir / "final" / "model.safetensors").is_file()
