"""benchmarks/serve_load.py --quick prints the model-alone batching ceiling and the ratios against it, and every
process it starts (the servers and LitServe's spawned workers) is gone when it ends, normally or on Ctrl-C.

Processes are found by the marker tests/process_tree.py puts in the benchmark's environment, which everything
it starts inherits whatever its parent or session ends up being. Behaviour only: no throughput thresholds.
"""

from __future__ import annotations

import importlib.util
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.process_tree import kill_tree, marked_processes, poll, popen

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
HAS_LITSERVE = importlib.util.find_spec("litserve") is not None
NUMBER = r"[\d.]+"


def _live(token: str) -> list[psutil.Process]:
    """Marked processes that still run (a killed orphan may stay a zombie until init reaps it)."""
    out = []
    for p in marked_processes(token):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


@pytest.mark.slow  # builds MiniLM, its OpenVINO IR and gpt2, and starts four servers: about 2-3 min on 2 cores
@pytest.mark.timeout(900)
def test_quick_mode_prints_the_ceiling_and_the_ratios_and_leaves_no_process():
    servers = "batched,unbatched,openvino,litserve" if HAS_LITSERVE else "batched,unbatched,openvino"
    proc = popen([sys.executable, str(BENCHMARK), "--quick", "--servers", servers],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=840)
        assert proc.returncode == 0, err[-3000:]
        left = _live(proc.tree_token)  # before kill_tree: the benchmark itself must have stopped them
        assert left == [], [p.cmdline() for p in left]
    finally:
        kill_tree(proc)
    assert re.search(rf"^model alone \(median of 30 and 14 forwards\): {NUMBER} ms a sample at batch 1, {NUMBER} ms "
                     rf"at batch 32: {NUMBER} -> {NUMBER} samples/s, ceiling x{NUMBER}$", out, re.M), out  # fmt: skip
    assert re.search(rf"^model alone, fastest forwards: {NUMBER} ms a sample at batch 1, {NUMBER} ms at batch 32, "
                     rf"x{NUMBER}$", out, re.M), out  # fmt: skip
    ratio = re.search(rf"^batching at concurrency 32: deepseek-serve batched/unbatched x({NUMBER}) / model alone batch "
                      rf"32/batch 1 x({NUMBER}) = (\d+)% of the ceiling \(target >= 90%: (met|missed)\)$", out, re.M)  # fmt: skip
    assert ratio, out
    server, ceiling, share, verdict = float(ratio[1]), float(ratio[2]), int(ratio[3]), ratio[4]
    assert share == round(100 * server / ceiling) or abs(share - 100 * server / ceiling) <= 1  # rounding of x.xx
    assert verdict == ("met" if share >= 90 else "missed") or abs(share - 90) <= 1
    # the run's OpenVINO IR (deepseek export --format openvino) served as a version, beside the torch model
    assert re.search(rf"^deepseek-serve batched, OpenVINO version at concurrency 32: {NUMBER} samples/s, x{NUMBER} the "
                     rf"torch version; (the fastest|not the fastest) server here$", out, re.M), out  # fmt: skip
    assert re.search(rf"^throughput at concurrency 32: deepseek-serve batched {NUMBER} samples/s / model alone at "
                     rf"batch 32 {NUMBER} samples/s = \d+%$", out, re.M), out  # fmt: skip
    assert re.search(rf"^CPU a sample at concurrency 32 \(less sensitive to other load\): model alone at batch 32 "
                     rf"{NUMBER} ms; deepseek-serve batched {NUMBER} ms \(\d+% as efficient\)", out, re.M), out  # fmt: skip
    if HAS_LITSERVE:
        assert re.search(rf"^LitServe batched at concurrency 32: {NUMBER} samples/s \(\d+% of the model alone\); "
                         rf"deepseek-serve batched x{NUMBER} LitServe batched \(target >= 1: (met|missed)\)$",
                         out, re.M), out  # fmt: skip
    rows = re.findall(r"^(deepseek-serve batched|deepseek-serve unbatched|LitServe batched)\s+c=(\d+)\s.* server CPU "
                      r"\s*[\d.]+ ms/req", out, re.M)  # fmt: skip
    expected = ["deepseek-serve batched", "deepseek-serve unbatched"] + ["LitServe batched"] * HAS_LITSERVE
    assert rows == [(name, c) for name in expected for c in ("1", "8", "32")], out
    assert re.search(r"^errors across deepseek-serve runs: 0 ", out, re.M), out


@pytest.mark.slow  # starts LitServe (a server and spawned workers), then Ctrl-C: about 20-60 s
@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAS_LITSERVE, reason="litserve is not installed (dev extra)")
def test_ctrl_c_mid_run_stops_litserve_and_its_workers():
    # 1000 requests a run (250 at concurrency 1): LitServe is still being measured when the SIGINT lands (with
    # --quick's 64 the run could end between the line read below and the signal, and exit 0: seen in CI)
    proc = popen([sys.executable, str(BENCHMARK), "--quick", "--requests", "1000", "--servers", "litserve"],
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        seen = []
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line)
            if line.startswith("LitServe batched"):  # measuring: the server and its workers are up
                break
        else:
            pytest.fail("the benchmark ended before measuring LitServe:\n" + "".join(seen)[-3000:])
        running = _live(proc.tree_token)
        assert len(running) >= 3, [p.cmdline() for p in running]  # LitServe's main process and what it spawned
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert poll(lambda: not _live(proc.tree_token), timeout=5), [p.cmdline() for p in _live(proc.tree_token)]
    finally:
        kill_tree(proc)
