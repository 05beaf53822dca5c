"""Log sinks: ``logging.sinks`` picks where records and the run summary go, a user's class by import path."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from deepseek.cli.main import main
from deepseek.config.schema import LoggingSection
from deepseek.registry import RegistryError
from deepseek.train.logger import RunLogger
from deepseek.train.sinks import build_sinks
from tests.conftest import write_yaml

RECORDER = """
SEEN = []


class Recorder:
    def __init__(self, tag: str = "", run_dir=None):
        self.tag, self.run_dir = tag, run_dir

    def log(self, metrics, step):
        SEEN.append(("log", self.tag, step, dict(metrics)))

    def summary(self, summary):
        SEEN.append(("summary", self.tag, dict(summary)))

    def close(self):
        SEEN.append(("close", self.tag, str(self.run_dir)))


class NotASink:
    def log(self, metrics, step): ...
"""


@pytest.fixture
def recorder_module(tmp_path, monkeypatch):
    """``rec_sinks`` in a fresh cwd, importable only for this test (``main`` puts the cwd on sys.path)."""
    (tmp_path / "rec_sinks.py").write_text(RECORDER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.delitem(sys.modules, "rec_sinks", raising=False)
    yield
    sys.modules.pop("rec_sinks", None)


def _config(tmp_path, logging: dict) -> str:
    cfg = {
        "model": {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [8]},
        "data": {"name": "digits", "batch_size": 64},
        "train": {"max_steps": 4, "val_every_steps": 2, "val_every_epochs": None},
        "logging": {"progress": "plain", "every_steps": 2, **logging},
        "checkpoint": {"every_minutes": None, "save_best": False},
    }
    return str(write_yaml(tmp_path / "cfg.yaml", cfg))


def test_a_users_sink_by_import_path_receives_the_metrics_and_the_summary(tmp_path, recorder_module, capsys):
    sinks = ["jsonl", {"name": "rec_sinks:Recorder", "tag": "mine"}]
    run_dir = tmp_path / "run"
    assert main(["train", _config(tmp_path, {"sinks": sinks}), "--run-dir", str(run_dir)]) == 0
    seen = sys.modules["rec_sinks"].SEEN
    logs = [s for s in seen if s[0] == "log"]
    train = [(step, m) for _, tag, step, m in logs if "train/loss" in m]
    val = [(step, m) for _, tag, step, m in logs if "val/loss" in m]
    assert [step for step, _ in train] == [2, 4] and all(m["epoch"] == 0 for _, m in train)
    assert [step for step, _ in val] == [2, 4] and all("val/accuracy" in m for _, m in val)
    assert all(tag == "mine" for _, tag, *_ in seen)
    kinds = [s[0] for s in seen]
    assert kinds[-2:] == ["summary", "close"] and kinds.count("summary") == 1
    summary = seen[-2][2]
    assert summary == json.loads((run_dir / "summary.json").read_text())  # the summary fit() returns
    assert seen[-1][2] == str(run_dir)  # a sink that asks for run_dir gets it
    jsonl = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in jsonl] == [2, 2, 4, 4]  # the jsonl sink still writes what it always did
    assert not (run_dir / "tb").exists()  # tensorboard not listed: not written
    out = capsys.readouterr().out
    assert "run summary" not in out and "train/loss" not in out  # no console sink: nothing on the console


def test_a_sink_name_or_argument_that_does_not_exist_is_a_one_line_usage_error(tmp_path, recorder_module, capsys):
    cfg = _config(tmp_path, {})
    code = main(["train", cfg, "--run-dir", str(tmp_path / "r1"), "logging.sinks=[jsonl, jsnl]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "logging.sinks[1].name: unknown sink 'jsnl'; did you mean 'jsonl'" in err
    code = main(
        ["train", cfg, "--run-dir", str(tmp_path / "r2"), "logging.sinks=[{name: 'rec_sinks:Recorder', tg: 1}]"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "logging.sinks[0].tg: not an argument of sink 'rec_sinks:Recorder'; allowed: tag" in err


def test_an_object_without_the_sink_methods_is_refused(recorder_module):
    with pytest.raises(RegistryError, match=r"built a NotASink without summary, close\(\)"):
        build_sinks(["rec_sinks:NotASink"])
    with pytest.raises(RegistryError, match="standard-library"):
        build_sinks(["os:system"])


def test_logging_tensorboard_still_switches_the_tensorboard_sink():
    assert LoggingSection().sink_specs() is None  # the defaults: jsonl, tensorboard, console
    names = lambda section: [c.name for c in section.sink_specs()]  # noqa: E731
    assert names(LoggingSection(sinks=["jsonl", "tensorboard", "console"], tensorboard=False)) == ["jsonl", "console"]
    assert names(LoggingSection(sinks=["jsonl"], tensorboard=True)) == ["jsonl", "tensorboard"]
    assert names(LoggingSection(sinks=["jsonl"])) == ["jsonl"]  # tensorboard left at its default: as listed


def test_default_sinks_write_what_the_logger_always_wrote(tmp_path):
    stream = io.StringIO()
    log = RunLogger(tmp_path, total_steps=4, progress="plain", stream=stream)
    assert [type(s).__name__ for s in log.sinks] == ["JsonlSink", "TensorBoardSink", "ConsoleSink"]
    log.log_step(2, 0, {"train/loss": 0.5})
    log.log_validation(2, 0, {"val/loss": 0.25})
    log.summary_table({"val": {"loss": 0.25}, "steps": 2, "stop_reason": "max_steps=2"})
    log.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 2, "epoch": 0, "train/loss": 0.5}, {"step": 2, "epoch": 0, "val/loss": 0.25}]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    out = stream.getvalue()
    assert "step 2/4  epoch 0  train/loss 0.5000" in out and "step 2  epoch 0  val/loss 0.2500" in out
    assert "run summary" in out and "max_steps=2" in out


def test_the_trainer_takes_sink_objects_from_python(tmp_path, recorder_module):
    import rec_sinks

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(4)]
    trainer = ds.Trainer(model, max_epochs=1, metrics=(), log_every_steps=2, sinks=[rec_sinks.Recorder("py")])
    summary = trainer.fit(data)
    steps = [s[2] for s in rec_sinks.SEEN if s[0] == "log"]
    assert steps == [2, 4] and rec_sinks.SEEN[-2] == ("summary", "py", summary)
