"""benchmarks/data_streaming.py --quick runs end to end: a throughput row with its ratio and verdict, and a
memory-bounded epoch that streams every sample of the shards it wrote (behaviour, not timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "data_streaming.py"


@pytest.mark.slow  # writes shards, starts a DataLoader worker and a child process: 15-60 s here
def test_the_quick_mode_runs_and_reports_each_target():
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"^digits \(1437 samples, \(1, 8, 8\)\)\s+1\s+[\d,]+\s+[\d,]+\s+[\d.]+\s+(met|missed)$", out, re.M), out
    first = r"^digits \(1437 samples, \(1, 8, 8\)\)\s+1\s+[\d,]+\s+[\d,]+\s+[\d.]+   first epoch$"
    assert re.search(first, out, re.M), out  # a new loader's first pass (worker start, first opens) is shown too
    epoch = re.search(r"\((\d+) shards, (\d+) uint8 .* streamed (\d+) samples", out)
    assert epoch and int(epoch.group(1)) >= 1 and epoch.group(2) == epoch.group(3), out  # every sample, once
    assert re.search(r"peak RSS [\d.]+ GB .*: under the budget; .*missed \(quick: the data is not 3x the budget\)", out)
