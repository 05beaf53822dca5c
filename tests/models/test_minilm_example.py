"""examples/finetune_minilm_lora.py runs end to end (on a subset) and reports the three variants."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_minilm_comparison_example_runs(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "cmp.json"
    r = subprocess.run(
        [sys.executable, str(REPO / "examples" / "finetune_minilm_lora.py"), "--epochs", "1", "--limit", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["variant"]: row for row in json.loads(out.read_text())}
    assert len(rows) == 3 and all(0.0 <= row["val_accuracy"] <= 1.0 for row in rows.values())
    fractions = [row["trainable_fraction"] for row in rows.values()]
    assert fractions[0] < fractions[1] < fractions[2] == 1.0  # head < LoRA + head < everything
