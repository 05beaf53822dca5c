"""``deepseek data drift`` takes what ``load_matrix`` takes: tables, .npy arrays and dataset splits (issue 12)."""

from __future__ import annotations

import json

import numpy as np

from deepseek.cli.main import main


def test_drift_accepts_dataset_splits_as_the_readme_shows(tmp_path, capsys):
    report = tmp_path / "drift.json"
    code = main(["data", "drift", "digits:train", "digits:val", "--json", str(report)])
    assert code == 0, capsys.readouterr().err
    assert json.loads(report.read_text())["reference"] == "digits:train"


def test_drift_accepts_npy_arrays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ref.npy", rng.normal(size=(200, 3)))
    np.save(tmp_path / "new.npy", rng.normal(size=(200, 3)))
    assert main(["data", "drift", str(tmp_path / "ref.npy"), str(tmp_path / "new.npy")]) == 0


def test_a_missing_npy_file_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "drift", str(tmp_path / "ref.npy"), "digits:val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "ref.npy" in err[0]
