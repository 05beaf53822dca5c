"""benchmarks/serve_stream.py --quick prints tokens/s and time to first token for continuous, static and
per-request batching at concurrency 1, 8 and 32, and continuous's ratios to the other two."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ROW = re.compile(r"^(continuous|static|per-request)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", re.M)
RATIO = re.compile(r"^ratio vs (static|per-request)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", re.M)


@pytest.mark.slow  # three schedulers x three concurrencies, 16 requests each: 2.6 s, 7.5 s on a loaded 2-core CPU
def test_the_quick_mode_prints_every_mode_at_every_concurrency_with_ratios():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "serve_stream.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ROW.findall(done.stdout)
    assert [(mode, int(c)) for mode, c, *_ in rows] == [
        (mode, c) for c in (1, 8, 32) for mode in ("continuous", "static", "per-request")
    ], done.stdout
    assert all(float(v) > 0 for *_, tps, ttft, p50 in rows for v in (tps, ttft, p50))
    ratios = RATIO.findall(done.stdout)
    assert [(other, int(c)) for other, c, *_ in ratios] == [
        (other, c) for c in (1, 8, 32) for other in ("static", "per-request")
    ]
    table = {(mode, c): float(tps) for mode, c, tps, *_ in rows}
    for other, c, tps_ratio, _ in ratios:  # the ratios are the table's own numbers
        expected = table["continuous", c] / table[other, c]
        assert float(tps_ratio) == pytest.approx(expected, rel=0.02, abs=0.01)
    assert "untrained" in done.stdout.splitlines()[0]  # the header says what model was timed
