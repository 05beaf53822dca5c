"""``train.on_nonfinite``: a nan/inf loss stops the run (default) with a clear error, skips that optimizer
step, or is ignored; checked on every micro-batch, and decided together by all DDP ranks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from deepseek.cli.main import main
from deepseek.train.checkpoint import load_weights
from deepseek.train.step import NonFiniteLossError
from tests.conftest import REPO
from tests.gloo_ranks import run_ranks

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def batches(n: int, bad: set[int], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of (4, 3) inputs and 2-class targets; the inputs of the batches in ``bad`` are NaN."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x = torch.randn(4, 3, generator=g)
        out.append((x * math.nan if i in bad else x, torch.randint(0, 2, (4,), generator=g)))
    return out


def trainer(model: nn.Module, **kw) -> ds.Trainer:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kw = {"max_epochs": 1, "progress": "off", "tensorboard": False, "metrics": (), "val_every_epochs": None, **kw}
    return ds.Trainer(model, opt, **kw)


def finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_stop_is_the_default_and_keeps_earlier_checkpoints(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    t = trainer(model, run_dir=tmp_path, checkpoint_every_steps=1, checkpoint_every_minutes=None)
    with pytest.raises(NonFiniteLossError) as info:
        t.fit(batches(6, bad={3}))
    message = str(info.value)
    assert "\n" not in message and "step 4" in message and "nan" in message and "on_nonfinite" in message
    assert finite(model) and t.global_step == 3  # the bad step was not taken
    saved = t.ckpt.checkpoints()
    assert len(saved) == 3 and not (tmp_path / "final").exists() and not (tmp_path / "summary.json").exists()
    restored = nn.Linear(3, 2)
    load_weights(restored, saved[-1] / "model.safetensors")
    assert finite(restored) and all(torch.equal(a, b) for a, b in zip(restored.parameters(), model.parameters()))


def test_skip_drops_the_step_and_counts_it():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = batches(6, bad={1, 4})
    t = trainer(model, on_nonfinite="skip")
    t.fit(data)
    assert finite(model) and t.global_step == 6 and t.nonfinite_steps == 2
    torch.manual_seed(0)  # the same run without the bad batches: identical weights
    ref = nn.Linear(3, 2)
    trainer(ref).fit([b for i, b in enumerate(data) if i not in {1, 4}])
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))


def test_ignore_trains_on_as_before():
    model = nn.Linear(3, 2)
    trainer(model, on_nonfinite="ignore").fit(batches(4, bad={1}))
    assert not finite(model)


@pytest.mark.parametrize("bad_micro_batch", [0, 1])
def test_every_micro_batch_is_checked_under_accumulation(bad_micro_batch):
    model = nn.Linear(3, 2)
    t = trainer(model, accumulate_grad_batches=2)
    with pytest.raises(NonFiniteLossError):
        t.fit(batches(4, bad={2 + bad_micro_batch}))
    assert finite(model) and t.global_step == 1


def test_a_bad_setting_is_refused():
    with pytest.raises(ValueError, match="on_nonfinite"):
        trainer(nn.Linear(3, 2), on_nonfinite="halt")


def _rank_worker(rank: int, mode: str) -> tuple[str, int, list]:
    """Rank 1 alone sees a NaN batch at step 2; both ranks must decide the same (no hang)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = batches(4, bad={2} if rank == 1 else set(), seed=rank)
    t = trainer(model, on_nonfinite=mode)
    try:
        t.fit(data)
        outcome = "finished"
    except NonFiniteLossError:
        outcome = "stopped"
    return outcome, t.global_step, [p.detach().tolist() for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("mode, outcome, steps", [("stop", "stopped", 2), ("skip", "finished", 4)])
def test_ddp_ranks_take_the_same_decision(mode, outcome, steps):
    by_rank = run_ranks(_rank_worker, 2, mode, timeout_s=120)
    assert [r[:2] for r in by_rank.values()] == [(outcome, steps)] * 2
    assert by_rank[0][2] == by_rank[1][2] and all(torch.tensor(p).isfinite().all() for p in by_rank[0][2])


def test_the_cli_exits_1_with_one_line(tmp_path, capsys):
    argv = ["train", QUICKSTART, "--run-dir", str(tmp_path / "run"), "--progress", "off", "optim.lr=1e30",
            "train.max_steps=8", "train.max_epochs=null", "scheduler=null", "train.grad_clip_norm=null",
            "train.ema_decay=null", "checkpoint.every_steps=1", "logging.tensorboard=false"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "train.on_nonfinite" in err, err
    assert not (tmp_path / "run" / "final").exists()


def test_the_config_key_is_checked(capsys):
    assert main(["config", "validate", QUICKSTART, "train.on_nonfinite=halt"]) == 2
    assert "train.on_nonfinite" in capsys.readouterr().err
