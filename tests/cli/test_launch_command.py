"""The torchrun command line ``deepseek launch`` builds: one node, several nodes, elastic restarts; bad options."""

from __future__ import annotations

import sys

import pytest

from deepseek.cli.launch_cmd import torchrun_command
from deepseek.cli.main import build_parser, main


def _command(*argv: str) -> list[str]:
    args = build_parser().parse_args(["launch", *argv, "cfg.yaml"])
    return torchrun_command(args, "cfg.yaml", ["optim.lr=0.1"], "runs/r1")


def _torchrun_part(cmd: list[str]) -> list[str]:
    assert cmd[:3] == [sys.executable, "-m", "deepseek.cli.launch_cmd"]
    return cmd[3 : cmd.index("-m", 3)]


def test_one_node_is_standalone():
    cmd = _command("--nproc", "4")
    assert _torchrun_part(cmd) == ["--standalone", "--nproc-per-node=4"]
    assert cmd[cmd.index("-m", 3) :] == ["-m", "deepseek", "train", "cfg.yaml", "optim.lr=0.1", "--run-dir", "runs/r1"]


@pytest.mark.parametrize("node_rank, hosts", [("0", "1"), ("1", "0")])
def test_several_nodes_meet_at_the_c10d_endpoint_hosted_by_node_0(node_rank, hosts):
    cmd = _command("--nproc", "8", "--nnodes", "2", "--node-rank", node_rank, "--rdzv-endpoint", "node0:29400")
    assert _torchrun_part(cmd) == [
        "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=node0:29400", "--rdzv-id=deepseek-r1",
        f"--rdzv-conf=is_host={hosts}", "--nproc-per-node=8",
    ]  # fmt: skip


def test_elastic_restarts_resume_every_attempt_from_the_newest_checkpoint():
    cmd = _command("--nproc", "2", "--max-restarts", "3")
    assert "--max-restarts=3" in _torchrun_part(cmd)
    assert cmd[-2:] == ["--resume", "auto"]  # the first attempt starts fresh in a run without checkpoints
    assert "--resume" not in _command("--nproc", "2")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--nproc", "0"], "--nproc 0: the number of ranks on this node must be 1 or more"),
        (["--nproc", "1", "--nnodes", "2", "--run-dir", "r"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        (["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "h:1"], "--nnodes 2 needs --run-dir"),
        (["--nproc", "1", "--nnodes", "2", "--node-rank", "2"], "--node-rank 2: must be 0..1 for --nnodes 2"),
        (["--nproc", "1", "--rdzv-endpoint", "node0"], "--rdzv-endpoint 'node0': expected HOST:PORT"),
        (["--nproc", "1", "--max-restarts", "1", "--overwrite"], "--max-restarts resumes each restart"),
        (["--nproc", "1", "--max-restarts", "1", "--resume", "x/step-1"], "--resume 'x/step-1' with --max-restarts"),
    ],
)
def test_bad_launch_options_are_one_line_usage_errors(tmp_path, capsys, options, message):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {name: simple_cnn}\n")
    assert main(["launch", *options, str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
