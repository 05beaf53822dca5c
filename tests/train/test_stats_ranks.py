"""``logging.stats`` under DDP on two gloo ranks: rank 0 writes every rank's record at each recording step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tests.gloo_ranks import run_ranks

WORLD = 2


def _worker(rank: int, run_dir: str) -> list:
    """A tiny DDP run whose ranks read different data; rank 0 returns stats.jsonl's records."""
    import deepseek as ds
    from deepseek.train.stats import StatsRecorder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    data = [(torch.randn(4, 5, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(4)]
    trainer = ds.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=1, metrics=(), progress="off",
        tensorboard=False, checkpoint_every_minutes=None, run_dir=run_dir, strategy="ddp",
        callbacks=[StatsRecorder(every_steps=2, activations=["0", "1"], histogram_bins=32)],
    )  # fmt: skip
    trainer.fit(data)
    if rank != 0:
        return []
    return [json.loads(line) for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 4 s on an idle machine, up to 16 s on a loaded one (two spawned ranks)
@pytest.mark.distributed
def test_rank_zero_writes_one_record_per_rank_and_recording_step(tmp_path):
    records = run_ranks(_worker, WORLD, str(tmp_path / "run"), timeout_s=120)[0]
    assert [(r["step"], r["rank"], r["world_size"]) for r in records] == [(2, 0, 2), (2, 1, 2), (4, 0, 2), (4, 1, 2)]
    for r0, r1 in zip(records[::2], records[1::2], strict=True):
        assert r0["grad_norm"] == r1["grad_norm"]  # after DDP's all-reduce the gradients agree
        assert r0["grad_hist"] == r1["grad_hist"]
        assert r0["act_hist"]["0"] != r1["act_hist"]["0"]  # the ranks' data differ, so do their activations
        assert sum(r0["act_hist"]["0"]) == sum(r1["act_hist"]["0"]) == 4 * 8
        assert len(r0["edges"]) == 33 and r0["edges"] == r1["edges"]
