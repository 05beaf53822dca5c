"""benchmarks/hpo_digits.py --quick runs a TPE and a random study through deepseek.search.tune.tune on the digits
config and prints the best-so-far table (behaviour, not timing)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import hpo_digits  # noqa: E402


@pytest.mark.slow  # two studies of 6 one-epoch trials: 10-30 s here
def test_the_quick_mode_runs_both_samplers_and_prints_best_so_far(tmp_path, capsys):
    curves = hpo_digits.main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert set(curves) == {"tpe", "random"}
    for sampler, per_seed in curves.items():
        assert len(per_seed) == 1 and len(per_seed[0]) == 6, (sampler, per_seed)
        curve = per_seed[0]
        assert all(0.0 < v <= 1.0 for v in curve) and curve == sorted(curve), (sampler, curve)
        assert (tmp_path / f"{sampler}-seed0" / "trials" / "0005").is_dir()  # each trial is a real run directory
        row = re.search(rf"^{sampler}\s+1\s+((?:[\d.]+ ± [\d.]+\s*){{3}})$", out, re.M)
        assert row, out
        firsts = [float(x) for x in re.findall(r"([\d.]+) ±", row.group(1))]
        assert firsts == pytest.approx([100 * curve[n - 1] for n in (1, 5, 6)], abs=0.006)
    assert re.search(r"^final best: tpe higher on \d, equal on \d, random higher on \d seeds$", out, re.M), out


def test_best_so_far_is_the_running_maximum():
    assert hpo_digits.best_so_far([0.5, 0.4, 0.7, 0.6]) == [0.5, 0.5, 0.7, 0.7]
