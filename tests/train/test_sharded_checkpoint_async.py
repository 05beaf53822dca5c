"""Asynchronous sharded saves (``checkpoint.async_save``): training goes on while the shards are written,
the checkpoint is sealed only once they are, and a kill during the write leaves a tmp dir resume ignores."""

from __future__ import annotations

import json
import os
import signal
import sys

import pytest
from safetensors.torch import load_file

from tests import process_tree
from tests.conftest import REPO
from tests.train.test_sharded_checkpoint import make_trainer, tiny_gpt2, token_batches

SCRIPT = """
import os, signal, sys, threading
from pathlib import Path

import torch.distributed.checkpoint.filesystem as dcp_filesystem

from tests.train.test_sharded_checkpoint import make_trainer, tiny_gpt2, token_batches

KILL_AT = int(os.environ.get("DS_TEST_KILL_AT", "0"))
real_fsync = dcp_filesystem.os.fsync

def fsync_then_die(fd):
    '''After the background writer's first file of the save of step KILL_AT (named by its temporary directory,
    so an earlier save still being written in the background never triggers it): SIGKILL, mid-save.'''
    real_fsync(fd)
    if KILL_AT and f".tmp-step-{KILL_AT:08d}" in os.readlink(f"/proc/self/fd/{fd}") \
            and threading.current_thread() is not threading.main_thread():
        os.kill(os.getpid(), signal.SIGKILL)

dcp_filesystem.os.fsync = fsync_then_die

trainer = make_trainer(tiny_gpt2(), Path(sys.argv[1]), 8, sharded_checkpoint=True, async_checkpoint=True)
trainer.fit(token_batches(8), resume=sys.argv[2] if len(sys.argv) > 2 else None)
"""


def test_an_asynchronous_save_is_sealed_by_the_next_save_and_by_the_end_of_fit(tmp_path):
    sealed: list[int] = []

    class Sealed:
        def on_checkpoint(self, trainer, path):
            sealed.append((int(path.name.removeprefix("step-")), trainer.global_step))

    make_trainer(tiny_gpt2(), tmp_path / "sync", 8, sharded_checkpoint=True).fit(token_batches(8))
    trainer = make_trainer(tiny_gpt2(), tmp_path / "async", 8, sharded_checkpoint=True, async_checkpoint=True,
                           callbacks=[Sealed()])  # fmt: skip
    trainer.fit(token_batches(8))
    # step 3's checkpoint is sealed when step 6's save starts, step 6's at the final save, step 8's before
    # fit() returns: none is sealed before its write completed, none is left unsealed
    assert sealed == [(3, 6), (6, 8), (8, 8)]
    ckpts = tmp_path / "async" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000003", "step-00000006", "step-00000008"]
    a, b = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("sync", "async"))
    assert all(a[k].equal(b[k]) for k in a)
    for step in (3, 6, 8):  # the shards written in the background hold the state of their own step
        name = f"checkpoints/step-{step:08d}/shards"
        assert [f.read_bytes() for f in sorted((tmp_path / "sync" / name).glob("*.distcp"))] == [
            f.read_bytes() for f in sorted((tmp_path / "async" / name).glob("*.distcp"))
        ], step


def test_async_save_needs_sharded_checkpoints(tmp_path):
    trainer = make_trainer(tiny_gpt2(), tmp_path / "run", 1, sharded_checkpoint=False, async_checkpoint=True)
    with pytest.raises(ValueError, match=r"checkpoint\.async_save: true needs sharded checkpoints"):
        trainer.fit(token_batches(1))


def _run(script, *args: str, kill_at: int = 0):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_TEST_KILL_AT": str(kill_at)}
    return process_tree.run([sys.executable, str(script), *args], 240, env=env, cwd=REPO)


@pytest.mark.slow
def test_a_kill_during_an_asynchronous_save_leaves_a_tmp_dir_that_resume_ignores(tmp_path):
    script = tmp_path / "train_async.py"
    script.write_text(SCRIPT)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert (r := _run(script, str(straight))).returncode == 0, r.stderr[-3000:]
    r = _run(script, str(killed), kill_at=6)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    ckpts = killed / "checkpoints"
    assert [p.name for p in ckpts.glob("step-*")] == ["step-00000003"]  # sealed when step 6's save began
    assert [p.name.rsplit("-", 1)[0] for p in ckpts.glob(".tmp-*")] == [".tmp-step-00000006"]
    assert not (next(ckpts.glob(".tmp-*")) / "meta.json").exists()
    assert (r := _run(script, str(killed), "auto")).returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 3}.items() <= next(r for r in records if r.get("event")).items()
    a, b = (load_file(run / "final" / "model.safetensors") for run in (straight, killed))
    assert all(a[k].equal(b[k]) for k in a)
    assert not list(ckpts.glob(".tmp-*"))  # the next run's pruning removed the dead save's directory
