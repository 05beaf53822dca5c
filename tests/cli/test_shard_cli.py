"""``deepseek data shard``: kill -9 mid-write then resume, config sources, and one-line usage errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from deepseek.cli.main import main
from deepseek.cli.shard_cmd import parse_size
from deepseek.data.shards.format import INDEX_FILE
from deepseek.data.shards.sources import dataset_source
from tests import process_tree
from tests.conftest import REPO, write_yaml
from tests.data.shards.gated_source import GATE_ENV
from tests.data.shards.test_writer import _assert_dataset, read_back

GATED = "tests.data.shards.gated_source:gated"
WAIT_S = 120


def _shard_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "deepseek", "data", "shard", GATED, "--out", str(out), "--shard-size", "512B", *extra]


def _open_gate_writer(fifo: Path, timeout: float) -> int | None:
    """Open ``fifo`` for writing: returns once the writer process opened it for reading (it reached the gate
    sample), or None after ``timeout`` s (then a reader of our own releases the blocked open)."""
    opened: list[int] = []
    opener = threading.Thread(target=lambda: opened.append(os.open(fifo, os.O_WRONLY)), daemon=True)
    opener.start()
    opener.join(timeout)
    if not opened:
        release = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        opener.join(timeout)
        os.close(release)
        for fd in opened:
            os.close(fd)
        return None
    return opened[0]


@pytest.mark.slow
@pytest.mark.distributed  # a writer process, then a second one resuming it
def test_kill_9_during_shard_writing_then_resume_keeps_finished_shards(tmp_path) -> None:
    out, fifo = tmp_path / "out", tmp_path / "gate"
    os.mkfifo(fifo)
    writer = process_tree.popen(_shard_cmd(out), cwd=REPO, env={**os.environ, GATE_ENV: str(fifo)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        gate = _open_gate_writer(fifo, WAIT_S)
        assert gate is not None, writer.stderr.read() if writer.poll() is not None else "the gate was never reached"
        process_tree.kill_tree(writer, signal.SIGKILL)  # the whole group, mid-way through shard 3
        os.close(gate)
    finally:
        process_tree.kill_tree(writer)
    train = out / "train"
    assert sorted(p.name for p in train.glob("shard-*.json")) == [f"shard-0000{k}.json" for k in range(3)]
    assert not (train / "shard-00003.arrow").exists() and list(train.glob(".shard-00003.arrow.tmp-*"))
    assert not (train / INDEX_FILE).exists()
    finished = {k: (train / f"shard-0000{k}.arrow").stat() for k in range(3)}

    resumed = process_tree.run(_shard_cmd(out), timeout=WAIT_S, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    for k, before in finished.items():
        after = (train / f"shard-0000{k}.arrow").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert (train / "shard-00003.arrow").is_file() and not list(train.glob(".*tmp*"))

    assert main(["data", "shard", GATED, "--out", str(tmp_path / "whole"), "--shard-size", "512B"]) == 0
    assert (train / INDEX_FILE).read_text() == (tmp_path / "whole" / "train" / INDEX_FILE).read_text()
    for shard in sorted(train.glob("shard-*.arrow")):
        assert shard.read_bytes() == (tmp_path / "whole" / "train" / shard.name).read_bytes()


@pytest.mark.slow
@pytest.mark.distributed  # a writer with two worker processes, then a second writer resuming it
def test_kill_9_of_the_writer_alone_ends_its_workers_and_a_rerun_resumes(tmp_path) -> None:
    out, fifo = tmp_path / "out", tmp_path / "gate"
    os.mkfifo(fifo)
    writer = process_tree.popen(_shard_cmd(out, "--workers", "2"), cwd=REPO, env={**os.environ, GATE_ENV: str(fifo)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        gate = _open_gate_writer(fifo, WAIT_S)
        assert gate is not None, writer.stderr.read() if writer.poll() is not None else "the gate was never reached"
        workers = [p.pid for p in process_tree.marked_processes(writer.tree_token) if p.pid != writer.pid]
        assert len(workers) >= 2
        writer.kill()  # SIGKILL to the writing process alone, one worker blocked in shard 3
        writer.wait(timeout=WAIT_S)
        alive = process_tree.wait_gone(workers, 30)
        os.close(gate)
        assert not alive, [process_tree.command_line(p) for p in alive]
    finally:
        process_tree.kill_tree(writer)
    train = out / "train"
    # finished: a sidecar is written after its shard's rename (the workers' order of shards is not fixed)
    finished = {p.with_suffix(".arrow").name: p.with_suffix(".arrow").stat() for p in train.glob("shard-*.json")}
    assert "shard-00003.arrow" not in finished and finished

    resumed = process_tree.run(_shard_cmd(out, "--workers", "2"), timeout=WAIT_S, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    for name, before in finished.items():
        after = (train / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    assert main(["data", "shard", GATED, "--out", str(tmp_path / "whole"), "--shard-size", "512B"]) == 0
    assert (train / INDEX_FILE).read_text() == (tmp_path / "whole" / "train" / INDEX_FILE).read_text()


def test_a_config_source_applies_its_preprocess_with_the_train_seed(tmp_path) -> None:
    steps = [{"type": "GaussianNoise", "params": {"sigma": 0.2}}]
    cfg = write_yaml(tmp_path / "cfg.yaml", {"model": {"name": "simple_cnn"},
                                             "data": {"name": "digits", "preprocess": steps}, "train": {"seed": 7}})  # fmt: skip
    assert main(["data", "shard", str(cfg), "--out", str(tmp_path / "out"), "--shard-size", "64KB", "--workers", "2"]) == 0
    expected = dataset_source("digits", {}, steps, seed=7).splits
    for split, dataset in (("train", expected.train), ("val", expected.val)):
        index, samples = read_back(tmp_path / "out" / split)
        assert index.preprocess == steps and index.source == str(cfg)
        _assert_dataset(samples, dataset)


def test_the_gpt2_chatterbot_config_shards_its_token_windows(tmp_path) -> None:
    from deepseek.data.datasets import build_dataset

    cfg = REPO / "configs" / "gpt2_chatterbot.yaml"
    assert main(["data", "shard", str(cfg), "--out", str(tmp_path), "--shard-size", "1MB", "--compression", "zstd"]) == 0
    index, samples = read_back(tmp_path / "train")
    assert index.task == "language_model" and index.columns[0]["shape"] == [129]
    _assert_dataset(samples, build_dataset("chatterbot_lm", seq_len=128, stride=64).train)


def test_a_text_corpus_is_tokenized_into_windows(tmp_path) -> None:
    import torch

    from deepseek.data.tasks.text import TokenWindows, encode_bytes

    text = "hello shards, " * 40
    (tmp_path / "c.txt").write_text(text)
    argv = ["data", "shard", str(tmp_path / "c.txt"), "--tokenize", "bytes", "--seq-len", "32", "--stride", "9"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--shard-size", "1KB", "--workers", "2"]) == 0
    index, samples = read_back(tmp_path / "out" / "train")
    assert index.task == "language_model" and len(index.shards) > 1
    _assert_dataset(samples, TokenWindows(torch.tensor(encode_bytes(text)), 32, 9))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["digits", "--shard-size", "12XB"], "--shard-size '12XB': allowed: a positive size"),
        (["digits", "--shard-size", "0"], "--shard-size '0': allowed: a positive size"),
        (["digits", "--workers", "0"], "--workers '0': allowed: a positive integer"),
        (["digits", "--workers", "two"], "--workers 'two': allowed: a positive integer"),
        (["digits", "--compression", "lz4"], "--compression 'lz4': allowed: zstd"),
        (["c.txt", "--tokenize", "nosuch.json", "--seq-len", "8"], "--tokenize 'nosuch.json': allowed: 'bytes'"),
        (["c.txt", "--tokenize", "bytes"], "--tokenize needs --seq-len"),
        (["digits", "--seq-len", "8"], "--seq-len/--stride 8/None: allowed only with --tokenize"),
        (["no/such/dir"], "SOURCE 'no/such/dir': no such file or directory"),
        (["nosuch.yaml"], "config 'nosuch.yaml': file not found"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, monkeypatch, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.txt").write_text("some text to tokenize " * 10)
    assert main(["data", "shard", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_another_plan_in_out_exits_2_suggesting_overwrite(tmp_path, capsys) -> None:
    out = str(tmp_path / "out")
    assert main(["data", "shard", GATED, "--out", out, "--shard-size", "1KB"]) == 0
    capsys.readouterr()
    assert main(["data", "shard", GATED, "--out", out, "--shard-size", "2KB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another plan" in err and "--overwrite" in err
    assert main(["data", "shard", GATED, "--out", out, "--shard-size", "2KB", "--overwrite"]) == 0


def test_sizes_take_binary_units() -> None:
    assert [parse_size("--s", t) for t in ("64KB", "128MB", "1GB", "1.5kb", "300", "2M")] == [
        64 << 10, 128 << 20, 1 << 30, 1536, 300, 2 << 20,
    ]  # fmt: skip
