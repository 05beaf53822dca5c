"""Values that used to escape validation (a traceback in training, or a NaN run that exits 0): both
``deepseek config validate`` and ``deepseek train`` refuse each with one line naming the key, the value and
what is allowed, exit code 2 and no traceback."""

from __future__ import annotations

import pytest
import torch

from deepseek.cli.main import main
from tests.conftest import REPO, run_cli

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")

# override -> (key named in the message, value shown, what is allowed)
REFUSED = {
    "optim.lr.x=1": ("optim.lr", "0.003", "not a section"),
    "data.name=../../etc/passwd": ("data.name", "../../etc/passwd", "import path such as"),
    "train.device=cuda": ("train.device", "'cuda'", "allowed: auto, cpu"),
    "train.device=nonsense": ("train.device", "'nonsense'", "allowed: auto, cpu"),
    "optim.betas=[2,3]": ("optim.betas", "(2.0, 3.0)", "in [0, 1)"),
    "optim.eps=-1": ("optim.eps", "-1", ">= 0"),
    "optim.lr=inf": ("optim.lr", "inf", "finite number"),
    "optim.lr=.inf": ("optim.lr", "inf", "finite number"),
    "optim.lr=1e400": ("optim.lr", "inf", "finite number"),
    # no bound of ours: torch's own check, run on a dummy parameter
    "optim.name=torch.optim.Adam optim.lr=-0.5": ("optim", "lr=-0.5", "Invalid learning rate"),
}


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "a machine without CUDA", also on a GPU host


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize("override", list(REFUSED))
def test_refused_with_one_line_and_exit_2(capsys, tmp_path, command, override):
    key, value, allowed = REFUSED[override]
    argv = ["config", "validate", QUICKSTART] if command == "validate" else ["train", QUICKSTART]
    if command == "train":
        argv += ["--run-dir", str(tmp_path / "run")]
    assert main([*argv, *override.split()]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: config ") and key in lines[0] and value in lines[0] and allowed in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the run started


@pytest.mark.slow  # a fresh process or server: kept out of the fast lane
def test_a_real_train_process_refuses_inf_lr_with_exit_2():
    r = run_cli("train", QUICKSTART, "optim.lr=1e400", env={"CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "optim.lr" in r.stderr and "finite" in r.stderr


def test_sane_values_still_pass(capsys):
    assert main(["config", "validate", QUICKSTART, "optim.betas=[0.8,0.99]", "optim.eps=0", "train.device=cpu"]) == 0
