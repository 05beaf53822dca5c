"""``deepseek comm bench`` end to end on local gloo ranks: on its own (--nproc) and under ``deepseek launch``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from deepseek.cli.comm_cmd import bench_report, describe_fits
from deepseek.cli.launch_cmd import comm_command, split_comm
from deepseek.cli.main import build_parser
from deepseek.distributed.bench import Row, bus_factor
from deepseek.distributed.cost import Link, predict

WAIT_S = 240  # an upper bound for the whole run, never a synchronisation


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "deepseek", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=WAIT_S)  # fmt: skip


@pytest.mark.slow  # starts torchrun and 2 gloo ranks: 10-30 s here
@pytest.mark.distributed
def test_comm_bench_on_two_ranks_writes_the_rows_and_the_fit(tmp_path):
    out = tmp_path / "bench.json"
    done = _run(["comm", "bench", "--nproc", "2", "--sizes", "1K..64K", "--ops", "all_reduce,all_gather",
                 "--iters", "5", "--budget-s", "0.02", "--json", str(out)], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backend"] == "gloo" and report["world"] == 2
    rows = report["rows"]
    assert [(r["op"], r["nbytes"]) for r in rows] == [(op, 2**k) for op in ("all_reduce", "all_gather")
                                                      for k in range(10, 17)]  # fmt: skip
    assert all(r["time_s"] > 0 and r["algbw"] == pytest.approx(r["nbytes"] / r["time_s"]) for r in rows)
    assert all(r["busbw"] == pytest.approx(r["algbw"] * (1.0 if r["op"] == "all_reduce" else 0.5)) for r in rows)
    fit = report["fit"]
    assert fit["gamma_identified"] and fit["samples"] == 14 and fit["ops"] == ["all_gather", "all_reduce"]
    assert min(fit["alpha"], fit["beta"], fit["gamma"]) >= 0 and fit["rms_rel_error"] >= 0
    assert (report["alpha"], report["beta"], report["gamma"]) == (fit["alpha"], fit["beta"], fit["gamma"])
    assert set(report["fit_per_op"]) == {"all_reduce", "all_gather"}
    assert "busbw GB/s" in done.stdout and "alpha-beta fit" in done.stdout  # rank 0 printed the table once
    assert done.stdout.count("collective benchmark: 2 ranks, gloo") == 1


@pytest.mark.slow  # starts torchrun and 2 gloo ranks: 10-30 s here
@pytest.mark.distributed
def test_launch_runs_comm_bench_under_torchrun_instead_of_train(tmp_path):
    done = _run(["launch", "--nproc", "2", "comm", "bench", "--sizes", "1K,4K", "--ops", "broadcast",
                 "--iters", "3", "--budget-s", "0.01"], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "-m deepseek comm bench --sizes 1K,4K" in done.stdout
    sizes = re.findall(r"^\s+broadcast\s+(\S+)\s+\d+\s+\d+\s+[\d.]+\s", done.stdout, re.M)  # the table's rows
    assert sizes == ["1K", "4K"], done.stdout
    assert re.search(r"^  broadcast +alpha +[\d.]+ us", done.stdout, re.M), done.stdout  # and its fit
    assert not (tmp_path / "runs").exists()  # no run directory for a benchmark


@pytest.mark.slow  # two CLI start-ups (torch import): about 10 s here
def test_bad_options_are_one_line_usage_errors(tmp_path):
    done = _run(["comm", "bench", "--nproc", "2", "--sizes", "1K..2Q"], tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --sizes '1K..2Q': '2Q' is not a size; allowed: a number of bytes with an optional K, M or G "
        "(binary), e.g. 1K..256M or 4K,1M"]  # fmt: skip
    done = _run(["comm", "bench", "--nproc", "1"], tmp_path)
    assert done.returncode == 2 and "--nproc 1: a collective benchmark needs 2 ranks or more" in done.stderr


def test_launch_hands_everything_after_comm_to_deepseek_comm_on_every_rank():
    assert split_comm(["launch", "--nproc", "4", "comm", "bench", "--sizes", "1K..1M"]) == (
        ["launch", "--nproc", "4"], ["bench", "--sizes", "1K..1M"])  # fmt: skip
    assert split_comm(["launch", "--nproc=2", "--max-restarts", "1", "comm", "bench"]) == (
        ["launch", "--nproc=2", "--max-restarts", "1"], ["bench"])  # fmt: skip
    assert split_comm(["launch", "--nproc", "2", "cfg.yaml", "comm"]) is None  # a config first: train
    assert split_comm(["launch", "--run-dir", "comm", "cfg.yaml"]) is None  # an option's value, not the command
    assert split_comm(["train", "comm"]) is None
    args = build_parser().parse_args(["launch", "--nproc", "2"])
    cmd = comm_command(args, ["bench", "--ops", "broadcast"])
    assert cmd[1:] == ["-m", "deepseek.cli.launch_cmd", "--standalone", "--nproc-per-node=2", "-m", "deepseek", "comm",
                       "bench", "--ops", "broadcast"]  # fmt: skip


def test_the_report_fits_all_ops_at_once_and_each_op_and_puts_the_constants_at_the_top():
    link = Link(alpha=50e-6, beta=1 / 3e9, gamma=1 / 8e9)
    rows = []
    for op in ("all_reduce", "all_gather"):
        for k in range(10, 24, 2):
            t = predict(op, 4, 2**k, link)
            rows.append(Row(op, 2**k, 2**k // 4, 4, 10, t, 2**k / t, 2**k / t * bus_factor(op, 4)))
    report = bench_report(rows, "gloo")
    assert (report["backend"], report["world"], len(report["rows"])) == ("gloo", 4, 14)
    assert report["alpha"] == pytest.approx(link.alpha, rel=1e-6) and report["gamma"] == pytest.approx(
        link.gamma, rel=1e-6
    )
    assert (
        report["fit"]["beta_gbps"] == pytest.approx(3.0, rel=1e-6) and report["fit"]["max_rel_error_above_64k"] < 1e-6
    )
    assert not report["fit_per_op"]["all_reduce"]["gamma_identified"]  # alone it cannot tell gamma from beta
    text = describe_fits(report)
    assert re.search(r"^  all ops +alpha +50\.00 us +1/beta +3\.000 GB/s +1/gamma +8\.000 GB/s", text, re.M), text
    assert re.search(r"^  all_reduce +alpha +50\.00 us .* 1/gamma +n/a ", text, re.M) and text.count("\n") == 3
