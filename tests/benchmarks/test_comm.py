"""benchmarks/comm.py --quick runs end to end: a fit on 2 gloo processes, 4-process predictions with their
relative errors, and a verdict per fit (behaviour, not timing: PASS or MISS both count as a run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "comm.py"


@pytest.mark.slow  # two `deepseek comm bench` launches, 2 and 4 gloo processes: 20-60 s here
@pytest.mark.distributed
def test_the_quick_mode_fits_on_two_processes_and_predicts_four():
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    fit = r"alpha [\d.]+ us, 1/beta ([\d.]+|inf) GB/s, 1/gamma ([\d.]+ GB/s|inf|n/a \([a-z ]+\)); in-sample"
    assert re.search(rf"^all ops at once, fit on 2 processes: {fit}", out, re.M), out
    for op in ("all_reduce", "all_gather"):
        assert re.search(rf"^{op}, fit on 2 processes: {fit}", out, re.M), out
        assert re.search(rf"^{op}, fit on 2 and 4 processes: {fit}", out, re.M), out
        assert re.search(rf"^\s+{op}: +[\d.]+% (PASS|MISS) \| +[\d.]+% (PASS|MISS) \| +[\d.]+% (PASS|MISS)$", out, re.M)
    rows = re.findall(r"^\s+(all_reduce|all_gather)\s+(\d+)(?:\s+[\d.]+){4}\s+(-?[\d.]+)%", out, re.M)
    assert [(op, int(n)) for op, n, _ in rows] == [(op, 2**k) for op in ("all_reduce", "all_gather")
                                                   for k in range(10, 17)], out  # fmt: skip
