"""benchmarks/profiler_flops.py --quick runs end to end: the three-way FLOP table has every model in both modes,
with dispatcher == module_sum and the gap to the analytic count within the stated tolerance and explained to the
last FLOP; the peak/matmul and export_stacks sections print their findings (behaviour, not timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "profiler_flops.py"
ROW = re.compile(r"^(\w+)\s+([\d,]+) (infer|train)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([+-][\d.]+)%  (yes|NO)$", re.M)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.slow  # counts every model of the zoo: about 5 s
def test_the_quick_mode_reconciles_every_model_and_reports_peaks_and_stacks():
    done = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^model\s+params mode\s+dispatcher\s+module_sum\s+analytic\s+gap  within 10%$", out, re.M), out
    rows = ROW.findall(out)
    assert [(name, mode) for name, _, mode, *_ in rows] == [
        (name, mode) for name in ("gpt2", "bert_base", "minilm") for mode in ("infer", "train")
    ], out
    for name, _, mode, dispatcher, module_sum, analytic, gap, verdict in rows:
        dispatcher, module_sum, analytic = _int(dispatcher), _int(module_sum), _int(analytic)
        assert dispatcher == module_sum > 0, (name, mode)
        assert abs(dispatcher - analytic) <= 0.10 * analytic and verdict == "yes", (name, mode, gap)
        assert abs(float(gap) / 100 - (dispatcher - analytic) / analytic) < 0.001  # the printed gap is this row's
        # training = forward + backward: about 3x the forward count (the fused-SDPA backward adds a little)
        if mode == "train":
            forward = next(_int(r[3]) for r in rows if r[0] == name and r[2] == "infer")
            assert 2.9 * forward < dispatcher < 3.2 * forward, name
    # every row's notes end with the item-by-item check: nothing left unexplained
    assert len(re.findall(r"^   - dispatcher - analytic = [+-][\d,]+ \([+-][\d.]+%\); unexplained after the items "
                          r"above: \+0$", out, re.M)) == 6, out  # fmt: skip
    for dtype in ("float32", "bfloat16"):  # with 1 thread always (also when torch computes with 1 thread)
        peak = re.search(
            rf"^cpu 1 thread {dtype} peak: (CPU .*: 1 cores? .* = [\d.]+ GFLOP/s|.*--peak-tflops)$", out, re.M
        )
        assert peak, out
        assert re.search(
            rf"^cpu 1 thread {dtype} 256\^3 matmul: [\d,.]+ GFLOP/s( = \d+% of peak| \(no peak)", out, re.M
        )
    # the finding: with_stack=True alone gives operator events no stack; verbose mode does, and so does flame
    assert re.search(r"^with_stack=True: export_stacks lines = 0, operator events with a stack = 0 of \d+$", out, re.M)
    verbose = re.search(r"^with_stack=True \+ verbose: export_stacks lines = (\d+), operator events with a stack = "
                        r"(\d+) of \d+$", out, re.M)  # fmt: skip
    assert verbose and int(verbose.group(1)) > 0 and int(verbose.group(2)) > 0, out
    flame = re.search(r"^stacks_from_profile \(verbose profile\): (\d+) stacks, (\d+) with Python frames", out, re.M)
    assert flame and int(flame.group(1)) > 0 and int(flame.group(2)) > 0, out
