"""benchmarks/comm_compression.py --quick runs end to end: fp32 and PowerSGD rank 2 trained under ``deepseek launch``,
with bytes per step from the hooks, validation accuracy and a verdict (behaviour, not timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "comm_compression.py"


@pytest.mark.slow
@pytest.mark.distributed
def test_the_quick_mode_compares_powersgd_with_fp32():
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    fp32 = re.search(r"^fp32\s+([\d,]+)\s+1\.0x\s+[\d,]+\s+\S+\s+([\d.]+)\s+\+0\.00\s*$", out, re.M)
    psgd = re.search(r"^powersgd-2\s+([\d,]+)\s+([\d.]+)x\s+.*\s(met|missed) \(>= 10x fewer bytes", out, re.M)
    assert fp32 and psgd, out
    assert int(psgd.group(1).replace(",", "")) < int(fp32.group(1).replace(",", "")) / 10  # low-rank factors
