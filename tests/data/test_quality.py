"""Drift detection flags a planted shift and passes an unshifted split; the cleaning report finds
planted duplicates, invalid values, label noise and out-of-domain samples."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch.utils.data import TensorDataset

from deepseek.cli.main import main
from deepseek.data import build_dataset
from deepseek.data.quality import drift_report, load_matrix, psi
from deepseek.data.quality.check import check_dataset
from tests.conftest import REPO


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=5000)
    assert psi(ref, rng.normal(size=5000)) < 0.01
    assert psi(ref, rng.normal(0.5, 1, size=5000)) > 0.2 > psi(ref, rng.normal(0.1, 1, size=5000))


def test_drift_flags_a_planted_shift_and_passes_an_unshifted_split(tmp_path):
    rng = np.random.default_rng(1)
    ref, new = rng.normal(size=(3000, 6)), rng.normal(size=(1500, 6))
    new[:, 4] = new[:, 4] * 1.8 + 0.3
    report = drift_report(ref, new)
    assert report["verdict"] == "drift" and report["drifted_features"] == ["f4"]
    train, _ = load_matrix("digits:train")
    val, _ = load_matrix("digits:val")
    assert drift_report(train, val)["verdict"] == "no drift"
    np.save(tmp_path / "ref.npy", ref), np.save(tmp_path / "new.npy", new)
    assert (
        main(
            [
                "data",
                "drift",
                str(tmp_path / "ref.npy"),
                str(tmp_path / "new.npy"),
                "--json",
                str(tmp_path / "d.json"),
                "--fail-on-drift",
            ]
        )
        == 1
    )
    assert json.loads((tmp_path / "d.json").read_text())["verdict"] == "drift"


def test_check_finds_planted_problems():
    splits = build_dataset("digits", flatten=True)
    x, y = splits.train.tensors[0].clone(), splits.train.tensors[1].clone()
    g = torch.Generator().manual_seed(0)
    flipped = torch.randperm(len(y), generator=g)[:30]
    y[flipped] = (y[flipped] + 1 + torch.randint(0, 9, (30,), generator=g)) % 10
    x[5], y[5] = x[6], y[6]  # duplicate
    x[7], y[7] = x[8], (y[8] + 1) % 10  # duplicate with a conflicting label
    x[9, 3] = float("nan")
    x, y = torch.cat([x, torch.rand(5, 64) * 3]), torch.cat([y, torch.zeros(5, dtype=torch.long)])  # off-domain noise
    report = check_dataset(TensorDataset(x, y), splits.val)
    noise = report["noise"]
    assert noise["duplicates"]["examples"] == [[5, 6], [7, 8]] and noise["conflicting_duplicates"]["examples"] == [
        [7, 8]
    ]
    assert noise["invalid_values"]["indices"] == [9]
    caught = set(flipped.tolist()) & set(noise["label_noise"]["indices"])
    assert len(caught) >= 18 and noise["label_noise"]["count"] <= 50  # recall >= 60%, few false alarms
    assert set(range(1437, 1442)) <= set(report["domain"]["flagged"])
    assert report["difficulty"]["hard"]["mean_loss"] > report["difficulty"]["easy"]["mean_loss"]
    assert 9 not in report["clean_indices"] and 5 in report["clean_indices"] and 6 not in report["clean_indices"]


def test_data_check_command_writes_report_and_clean_index(tmp_path, capsys):
    args = [
        "data",
        "check",
        str(REPO / "configs" / "quickstart.yaml"),
        "--json",
        str(tmp_path / "r.json"),
        "--write-clean",
        str(tmp_path / "clean.json"),
    ]
    assert main(args) == 0
    assert "suspected label noise" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    clean = json.loads((tmp_path / "clean.json").read_text())
    assert report["samples"] == 1437 and len(clean["indices"]) == 1437 - report["removed"]
