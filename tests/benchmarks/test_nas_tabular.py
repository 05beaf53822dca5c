"""benchmarks/nas_tabular.py --quick runs every NAS algorithm on NAS-Bench-Graph's shipped tables and prints a
parseable regret table; the tables load through the restricted unpickler, which refuses any other global."""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
ROW = re.compile(
    r"^(\w+)\s+(none|params|latency)\s+(reinforce|evolution|random|tpe)\s+(\d+)\s+(\d+)\s+"
    r"(-?[\d.]+|nan)\s+([\d.]+|nan)\s+(\d+)\s+([\d.]+|nan)\s+([\d.]+|nan)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
    re.M,
)

sys.path.insert(0, str(BENCHMARKS))
import nasbench_graph as nbg  # noqa: E402


@pytest.mark.slow  # 480 lookups of 4 algorithms in quick mode: about 6 s
def test_the_quick_mode_prints_a_regret_row_per_dataset_constraint_and_algorithm():
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "nas_tabular.py"), "--quick"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = ROW.findall(done.stdout)
    keys = [(d, c, a) for d, c, a, *_ in rows]
    assert keys == [
        (d, c, a)
        for d in ("cora", "citeseer")
        for c in ("none", "params", "latency")
        for a in ("reinforce", "evolution", "random", "tpe")
    ], done.stdout
    for d, c, a, budget, seeds, regret, std, _found, test, _, sat_p, sat_l, *_ in rows:
        assert (int(budget), int(seeds)) == (20, 3)
        assert 0.0 <= float(regret) < 100.0 and math.isfinite(float(std)), (d, c, a, regret, std)
        assert 0.0 < float(test) <= 100.0
        if c == "params":  # a constrained search never returns an architecture that breaks its constraint
            assert int(sat_p) == 100, (d, c, a)
        if c == "latency":
            assert int(sat_l) == 100, (d, c, a)
    # 20 random picks out of 26,206 archs do not hit the optimum every time: regret is measured, not zero, and
    # random search's mean over 3 seeds lies near its exact expectation from the table (std over seeds ~0.5)
    exact = re.findall(
        r"^(\w+) (none|params|latency)\b.*random search's exact expected regret ([\d.]+)$", done.stdout, re.M
    )
    assert [(d, c) for d, c, _ in exact] == [
        (d, c) for d in ("cora", "citeseer") for c in ("none", "params", "latency")
    ]
    measured = {(r[0], r[1]): float(r[5]) for r in rows if r[2] == "random"}
    assert any(v > 0.0 for v in measured.values()), measured
    for d, c, expected in exact:
        assert abs(measured[d, c] - float(expected)) < 1.5, (d, c, measured[d, c], expected)


def test_the_tables_load_without_running_code_and_other_globals_are_refused():
    table = nbg.load_table("cora")
    assert len(table) == 26206
    assert all(0.0 < v["valid_perf"] <= 1.0 and v["para"] > 0 and v["latency"] > 0 for v in table.values())

    class _Exploit:
        def __reduce__(self):
            return (os.getcwd, ())

    with pytest.raises(pickle.UnpicklingError, match="global posix.getcwd refused"):
        nbg.SafeTableUnpickler(io.BytesIO(pickle.dumps(_Exploit()))).load()


def test_isomorphic_raw_choices_share_one_table_key_and_all_skip_is_invalid():
    table = nbg.load_table("cora")
    # the README's graph (node 4 reads node 2, nodes 2 and 3 read node 1) written in two node orders
    a = nbg.table_key({"in1": 1, "in2": 2, "in3": 1, "op0": "gcn", "op1": "gin", "op2": "fc", "op3": "cheb"})
    b = nbg.table_key({"in1": 1, "in2": 1, "in3": 2, "op0": "gcn", "op1": "gin", "op2": "cheb", "op3": "fc"})
    assert a == b and a in table
    # three parallel nodes on node 1 in any order are one architecture; a different wiring is another
    c = nbg.table_key({"in1": 1, "in2": 1, "in3": 1, "op0": "gcn", "op1": "gin", "op2": "fc", "op3": "cheb"})
    d = nbg.table_key({"in1": 1, "in2": 1, "in3": 1, "op0": "gcn", "op1": "cheb", "op2": "gin", "op3": "fc"})
    assert c == d and c in table and c != a
    skip = nbg.table_key({"in1": 0, "in2": 0, "in3": 0, **{f"op{i}": "skip" for i in range(4)}})
    assert skip is None or skip not in table
