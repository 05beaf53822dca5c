"""Run logging that survives kills, resuming from an explicit checkpoint, time-based checkpoints."""

from __future__ import annotations

import io
import json

import torch
import torch.nn as nn

import deepseek as ds
from deepseek.train.logger import JsonlWriter, RunLogger


def batches(n: int = 8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(n)]


def make_trainer(run_dir, **kw) -> ds.Trainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    kw = {"max_epochs": None, "progress": "off", "tensorboard": False, "metrics": (), **kw}
    return ds.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=run_dir, **kw)


def test_jsonl_closes_a_cut_off_line_and_marks_the_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 0.5}\n{"step": 2, "train/lo')  # killed mid-write
    writer = JsonlWriter(path, resume_step=1)
    writer.write({"step": 2, "train/loss": 0.4})
    writer.close()
    lines = path.read_text().splitlines()
    assert lines[1] == '{"step": 2, "train/lo'  # kept as it was, now terminated
    parsed = [json.loads(line) for line in lines[2:]]
    assert parsed[0]["event"] == "resume" and parsed[0]["step"] == 1 and parsed[1]["step"] == 2


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    log = RunLogger(None, total_steps=10, progress="auto", tensorboard=False, stream=stream)
    log.log_step(5, 0, {"train/loss": 0.25, "lr": 1e-3})
    assert log.mode == "plain" and "step 5/10  epoch 0  train/loss 0.2500  lr 1.000e-03" in stream.getvalue()


def test_resume_from_an_explicit_checkpoint_path(tmp_path):
    data = batches()
    first = make_trainer(tmp_path / "a", max_steps=6, checkpoint_every_steps=3)
    first.fit(data)
    step3 = tmp_path / "a" / "checkpoints" / "step-00000003"
    straight = make_trainer(tmp_path / "b", max_steps=10)
    straight.fit(data)
    resumed = make_trainer(tmp_path / "c", max_steps=10)
    resumed.fit(data, resume=step3)
    assert resumed.global_step == 10
    assert torch.equal(resumed.model.weight, straight.model.weight)


def test_resume_auto_without_checkpoints_starts_fresh(tmp_path):
    t = make_trainer(tmp_path / "run", max_steps=2)
    t.fit(batches(), resume="auto")
    assert t.global_step == 2


def test_checkpoints_by_wall_clock(tmp_path):
    t = make_trainer(tmp_path / "run", max_steps=4, checkpoint_every_minutes=1e-9, keep_last=10)
    t.fit(batches())
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert names == [f"step-{i:08d}" for i in range(1, 5)]


def test_a_finished_run_resumed_with_more_steps_continues(tmp_path):
    data = batches()
    make_trainer(tmp_path / "run", max_steps=4).fit(data)  # its final checkpoint is at step 4
    extended = make_trainer(tmp_path / "run", max_steps=12)
    summary = extended.fit(data, resume="auto")
    straight = make_trainer(tmp_path / "straight", max_steps=12)
    straight.fit(data)
    assert extended.global_step == 12 and summary["stop_reason"] == "max_steps=12"
    assert torch.equal(extended.model.weight, straight.model.weight)
