"""``train.profile`` / ProfilerCallback inside real Trainer runs: the profiled run's results are bitwise those of
the unprofiled run, a run that resumes past the window profiles nothing, and one that ends inside it reports the
steps it recorded."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

import deepseek as ds
from deepseek.profiler import ProfilerCallback, schema_problems


def _config_run(run_dir: Path, profile: dict | None) -> dict[str, torch.Tensor]:
    train = {"max_steps": 5, "max_epochs": None, "val_every_epochs": None, "seed": 3}
    if profile is not None:
        train["profile"] = profile
    cfg = ds.load_config(None, data={
        "model": {"name": "mlp", "in_features": 64, "hidden": [32, 32], "num_classes": 10, "dropout": 0.3},
        "data": {"name": "digits", "flatten": True, "val_fraction": 0.2, "batch_size": 16},
        "optim": {"name": "adamw", "lr": 3e-3}, "train": train,
        "logging": {"tensorboard": False, "progress": "off"}})  # fmt: skip
    trainer = ds.Trainer.from_config(cfg, run_dir=run_dir)
    trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_profiling_a_window_leaves_the_run_bitwise_unchanged(tmp_path):
    plain = _config_run(tmp_path / "plain", None)
    profiled = _config_run(tmp_path / "profiled", {"start_step": 2, "steps": 2, "warmup": 1})
    assert plain.keys() == profiled.keys()
    assert all(torch.equal(plain[k], profiled[k]) for k in plain)  # dropout included: the RNG was not touched
    summary = json.loads((tmp_path / "profiled" / "profile" / "summary.json").read_text())
    assert schema_problems(summary) == [] and summary["steps"] == 2 and summary["batch_size"] == 16
    split = summary["split_s"]
    assert split["data_wait"] > 0 and split["forward"] > 0 and split["backward"] > 0 and split["optimizer"] > 0
    modules = {m["name"]: m for m in summary["modules"]}  # FLOPs counted on a copy of the model after the window
    assert modules["net"]["flops"] == summary["flops"]["per_step"] > modules["net.1"]["flops"] > 0
    for key in ("trace", "flamegraph_stack", "flamegraph_module"):
        assert (tmp_path / "profiled" / "profile" / summary["files"][key]).stat().st_size > 0


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 3))


def _data(n: int) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def _fit(run_dir: Path, callbacks: list, data: list, resume: str | None = None, val: list | None = None,
         **kw) -> ds.Trainer:
    model = _model()
    args = dict(max_epochs=1, metrics=(), progress="off", tensorboard=False, checkpoint_every_minutes=None)
    trainer = ds.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=run_dir, callbacks=callbacks,
                         **{**args, **kw})  # fmt: skip
    trainer.fit(data, val, resume=resume)
    return trainer


def test_a_run_that_resumes_past_the_window_profiles_nothing(tmp_path):
    _fit(tmp_path, [], _data(8), max_steps=4, checkpoint_every_steps=2)
    callback = ProfilerCallback(start_step=2, steps=2, warmup=0, print_table=False)
    trainer = _fit(tmp_path, [callback], _data(8), resume="auto", max_steps=6, checkpoint_every_steps=2)
    assert trainer.global_step == 6
    assert callback.summary is None and not (tmp_path / "profile").exists()


def test_a_run_ending_inside_the_window_reports_the_recorded_steps_with_accumulation(tmp_path):
    out = tmp_path / "elsewhere"
    callback = ProfilerCallback(start_step=1, steps=5, warmup=1, output_dir=str(out), print_table=False,
                                python_stacks=False)  # fmt: skip
    # 4 optimizer steps, the first one unrecorded warm-up: 3 recorded, before the run's final checkpoint
    _fit(tmp_path / "run", [callback], _data(8), accumulate_grad_batches=2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["batch_size"] == 8  # two micro-batches of 4 per step
    assert summary["split_s"]["forward"] > 0 and summary["split_s"]["backward"] > 0
    assert {m["name"] for m in summary["modules"]} >= {"0", "3"}
    assert not (tmp_path / "run" / "profile").exists()
    # python_stacks=False: no stacks, said so; the module flame graph is still drawn from every operator
    assert "Python stacks are not recorded (python_stacks: false)" in " ".join(summary["flops"]["notes"])
    assert (out / "stacks.txt").read_text().startswith("(no Python stacks recorded)")
    assert "aten::" in (out / "stacks_module.txt").read_text()


def test_validation_inside_the_window_is_left_out_of_the_steps_phases_and_batch(tmp_path):
    callback = ProfilerCallback(start_step=1, steps=2, warmup=1, print_table=False)
    val = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(3)]  # a batch size the steps do not have
    _fit(tmp_path, [callback], _data(6), val=val, max_steps=5, val_every_steps=1, val_every_epochs=None,
         save_best=False)  # a best checkpoint would end the window (torch.save under the stack profiler)
    summary = callback.summary
    assert summary["steps"] == 2 and summary["batch_size"] == 4
    # one training micro-batch of 4: forward, the second Linear's two backward products, the first one's weight
    # gradient only (its input needs no gradient); validation's batches of 10 would add more
    assert summary["flops"]["per_step"] == 2 * 4 * (6 * 12 + 12 * 3) + 2 * (2 * 4 * 12 * 3) + 2 * 4 * 6 * 12


def test_a_bad_train_profile_section_is_a_one_line_config_error(tmp_path, capsys):
    from deepseek.cli.main import main

    config = tmp_path / "c.yaml"
    config.write_text("model: {name: mlp, in_features: 64, num_classes: 10}\ndata: {name: digits, flatten: true}\n"
                      "train: {max_steps: 2, profile: {metrics: [gpu_util, bogus]}}\n")  # fmt: skip
    assert main(["train", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: train.profile.metrics: bogus is not a metric; allowed: gpu_util")
        and err.count("\n") == 1
    )
