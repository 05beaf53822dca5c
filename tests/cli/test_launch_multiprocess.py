"""Real launches on 127.0.0.1: two nodes, mpirun ranks, an elastic restart after kill -9, a dead rank's error.

Every run trains the same tiny config and must end with the final weights of one uninterrupted
``deepseek launch --nproc 2`` (the module's reference run), bit for bit: the ranks run one thread each
(``OMP_NUM_THREADS=1``), so no run differs from another in how it sums.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests import process_tree
from tests.conftest import REPO, write_yaml

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

WAIT_S = 240  # an upper bound for a whole launch or a poll, never a synchronisation
STEPS = 40


def _config(directory: Path, max_steps: int = STEPS) -> Path:
    return write_yaml(
        directory / "cfg.yaml",
        {
            "model": {"name": "simple_cnn", "width": 4},
            "data": {"name": "digits", "batch_size": 16},
            "train": {"max_steps": max_steps, "val_every_epochs": None},
            "checkpoint": {"every_steps": 1, "keep_last": 1000},
            "logging": {"progress": "off", "tensorboard": False},
        },
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "DS_DIST_BACKEND": "gloo", "MASTER_ADDR": "127.0.0.1",
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(directory: Path, name: str, *args: str) -> subprocess.Popen:
    """``deepseek launch ARGS`` in its own marked process tree; stdout and stderr go to files (no pipe fills up)."""
    out = open(directory / f"{name}.out", "w")  # noqa: SIM115 -- the child holds it; closed with the test's tmp dir
    err = open(directory / f"{name}.err", "w")  # noqa: SIM115
    cmd = [sys.executable, "-m", "deepseek", "launch", *args]
    return process_tree.popen(cmd, cwd=REPO, env=_env(), stdout=out, stderr=err)


def _finish(proc: subprocess.Popen, directory: Path, name: str) -> str:
    """Wait for a launch to end; returns its stderr. A launch past WAIT_S fails the test and leaves no process."""
    try:
        proc.wait(timeout=WAIT_S)
    finally:
        process_tree.kill_tree(proc)
    return (directory / f"{name}.err").read_text()


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


def _assert_same_weights(run_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    got = _final_weights(run_dir)
    assert got.keys() == reference.keys()
    differ = {k: (got[k] - reference[k]).abs().max().item() for k in got if not torch.equal(got[k], reference[k])}
    assert not differ, f"final weights differ from the one-node run: {differ}"


def _rank_pid(proc: subprocess.Popen, rank: str) -> int | None:
    """The pid of the training process with ``RANK=rank`` in ``proc``'s tree (None while there is none)."""
    for p in process_tree.marked_processes(proc.tree_token):  # type: ignore[attr-defined]
        try:
            if p.environ().get("RANK") == rank and "train" in p.cmdline():
                return p.pid
        except Exception:  # gone meanwhile
            continue
    return None


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of ``deepseek launch --nproc 2`` on one node, uninterrupted."""
    directory = tmp_path_factory.mktemp("reference")
    proc = _launch(directory, "launch", "--nproc", "2", str(_config(directory)), "--run-dir", str(directory / "run"))
    err = _finish(proc, directory, "launch")
    assert proc.returncode == 0, err
    # DDP without parallel.comm: its flat all-reduce is still timed and counted (issue 18's comm/* metrics)
    records = [json.loads(line) for line in (directory / "run" / "metrics.jsonl").read_text().splitlines()]
    comm = [r for r in records if "comm/seconds" in r]
    assert comm and comm[-1]["comm/seconds"] > 0 and 0 < comm[-1]["comm/share"] <= 1, records
    assert comm[-1]["comm/bytes"] == comm[-1]["comm/bytes_fp32"] > 0  # uncompressed
    return _final_weights(directory / "run")


def test_two_nodes_on_127_0_0_1_end_with_the_one_node_weights(tmp_path, reference):
    cfg, run_dir, endpoint = _config(tmp_path), tmp_path / "run", f"127.0.0.1:{_free_port()}"
    nodes = [
        _launch(tmp_path, f"node{rank}", "--nnodes", "2", "--node-rank", str(rank), "--nproc", "1",
                "--rdzv-endpoint", endpoint, str(cfg), "--run-dir", str(run_dir))  # fmt: skip
        for rank in (1, 0)  # node 1 first: it waits for node 0's rendezvous store
    ]
    try:
        errors = {rank: _finish(node, tmp_path, f"node{rank}") for rank, node in zip((1, 0), nodes)}
    finally:
        for node in nodes:
            process_tree.kill_tree(node)
    assert [node.returncode for node in nodes] == [0, 0], errors
    _assert_same_weights(run_dir, reference)


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun (Debian: openmpi-bin)")
def test_mpirun_ranks_train_like_torchrun_ranks(tmp_path, reference):
    """Document 003's ``mpirun -np 8 python train.py --distributed ...``: ranks from OMPI_COMM_WORLD_*,
    the rendezvous from MASTER_ADDR / MASTER_PORT exported with ``-x``."""
    run_dir = tmp_path / "run"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "-x", "MASTER_ADDR=127.0.0.1",
           "-x", f"MASTER_PORT={_free_port()}", "-x", "DS_DIST_BACKEND", "-x", "OMP_NUM_THREADS",
           sys.executable, "-m", "deepseek", "train", str(_config(tmp_path)), "--run-dir", str(run_dir)]  # fmt: skip
    done = process_tree.run(cmd, WAIT_S, cwd=REPO, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # one main rank, not two worlds of one
    _assert_same_weights(run_dir, reference)


def test_kill_9_of_a_rank_restarts_the_job_from_the_newest_checkpoint(tmp_path, reference):
    run_dir = tmp_path / "run"
    proc = _launch(tmp_path, "launch", "--nproc", "2", "--max-restarts", "1", str(_config(tmp_path)),
                   "--run-dir", str(run_dir))  # fmt: skip
    try:
        mid_run = process_tree.poll(
            lambda: (run_dir / "checkpoints" / "step-00000005").is_dir() or proc.poll() is not None, WAIT_S, 0.02
        )
        assert mid_run and proc.poll() is None, (tmp_path / "launch.err").read_text()
        victim = _rank_pid(proc, "1")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        err = _finish(proc, tmp_path, "launch")
    finally:
        process_tree.kill_tree(proc)
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    resumes = [r for r in records if r.get("event") == "resume"]
    assert len(resumes) == 1 and 5 <= resumes[0]["step"] < STEPS, resumes
    resumed_at = resumes[0]["time"]  # a checkpoint the dying attempt finished after the kill does not count
    after = sorted(m for p in (run_dir / "checkpoints").glob("step-*") if (m := p.stat().st_mtime) > resumed_at)
    print(f"\nkill -9 of rank 1 -> restarted ranks resumed at step {resumes[0]['step']}: "
          f"{resumed_at - killed_at:.1f} s; first step after it done: {after[0] - killed_at:.1f} s")  # fmt: skip
    _assert_same_weights(run_dir, reference)


def test_a_dead_rank_ends_the_job_with_one_line_naming_it(tmp_path):
    run_dir = tmp_path / "run"
    proc = _launch(tmp_path, "launch", "--nproc", "2", str(_config(tmp_path, max_steps=1_000_000)),
                   "--run-dir", str(run_dir))  # fmt: skip
    try:
        started = process_tree.poll(lambda: any((run_dir / "checkpoints").glob("step-*")) or proc.poll() is not None,
                                    WAIT_S)  # fmt: skip
        assert started and proc.poll() is None, (tmp_path / "launch.err").read_text()
        tree = [p.pid for p in process_tree.marked_processes(proc.tree_token)]  # type: ignore[attr-defined]
        victim = _rank_pid(proc, "1")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=60)  # far below gloo's 30-minute collective timeout
        assert not process_tree.wait_gone(tree, 60), "a rank or the agent outlived the job"
    finally:
        process_tree.kill_tree(proc)
    err = (tmp_path / "launch.err").read_text()
    assert proc.returncode != 0
    line = f"error: rank 1 (local rank 1, pid {victim}) was killed by signal SIGKILL; the job was stopped"
    assert line in err.splitlines(), err[-3000:]
