"""The search loop: history, resume after a torn write or kill -9, Pareto front, and the CLI end to end."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepseek.cli import nas_cmd
from deepseek.cli.dispatch import run_command
from deepseek.search.nas.history import pareto_front, read_history
from deepseek.search.nas.run import run_search
from deepseek.search.nas.space import parse_space

REPO = Path(__file__).resolve().parents[3]
BASE = REPO / "configs" / "quickstart.yaml"
SPACE = {
    "search_space": [
        {"layer_type": ["Conv", "Transformer"], "channels": [8, 16, 32], "activation": ["ReLU", "Swish"]},
        {"layer_type": ["Conv", "Skip"], "channels": [8, 16], "kernel_size": [3, 5]},
    ],
    "constraints": {
        "max_params": "20k",
        "target_device": "v100",
        "latency": "approximate_by_flops",
        "device_flops": "15.7T",
    },
}
EVALUATOR = """
import os, signal
from pathlib import Path

def score(candidate, spec):
    kill_at = os.environ.get("NAS_KILL_AT")
    history = Path(os.environ.get("NAS_OUT", ".")) / "history.jsonl"
    if kill_at and history.is_file() and len(history.read_text().splitlines()) == int(kill_at):
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of a candidate's evaluation
    return (candidate["layers.0.channels"] / 32 + (candidate["layers.0.activation"] == "Swish")
            + (candidate["layers.1.layer_type"] == "Conv") * candidate["layers.1.kernel_size"] / 10)
"""


def space(algorithm: str, n: int):
    return parse_space({**SPACE, "optimizer": {"algorithm": algorithm, "sample_size": n, "seed": 7}})


def quiet(_: str) -> None:
    return None


@pytest.fixture
def evaluator(tmp_path, monkeypatch):
    (tmp_path / "nas_eval_mod.py").write_text(EVALUATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("NAS_KILL_AT", raising=False)
    return "nas_eval_mod:score"


def choices(out: Path) -> list[dict]:
    return [r["choices"] for r in read_history(out / "history.jsonl")]


@pytest.mark.parametrize("algorithm", ["reinforce", "evolution", "tpe", "random"])
def test_resume_after_a_torn_last_line_continues_as_the_uninterrupted_search(tmp_path, evaluator, algorithm):
    run_search(space(algorithm, 14), BASE, tmp_path / "whole", evaluator=evaluator, log=quiet)
    part = tmp_path / "part"
    run_search(space(algorithm, 6), BASE, part, evaluator=evaluator, log=quiet)
    with (part / "history.jsonl").open("a") as f:
        f.write('{"n": 6, "choices": {"layers.0.layer_ty')  # killed inside the write
    lines: list[str] = []
    summary = run_search(space(algorithm, 14), BASE, part, evaluator=evaluator, log=lines.append)
    assert lines[0] == f"resuming: 6 of 14 samples in {part / 'history.jsonl'}"
    assert choices(part) == choices(tmp_path / "whole") and summary["sampled"] == 14
    assert [r["n"] for r in read_history(part / "history.jsonl")] == list(range(14))


@pytest.mark.slow  # a second Python process (imports torch): about 10 s
def test_resume_after_kill_9(tmp_path, evaluator):
    """A real SIGKILL in the middle of the 6th candidate; the restarted search ends as the uninterrupted one."""
    run_search(space("tpe", 12), BASE, tmp_path / "whole", evaluator=evaluator, log=quiet)
    out = tmp_path / "killed"
    script = ("import json, sys\nfrom deepseek.search.nas.run import run_search\nfrom deepseek.search.nas.space import "
              "parse_space\nrun_search(parse_space(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3], "
              "evaluator='nas_eval_mod:score')\n")  # fmt: skip
    raw = {**SPACE, "optimizer": {"algorithm": "tpe", "sample_size": 12, "seed": 7}}
    env = {**os.environ, "NAS_KILL_AT": "5", "NAS_OUT": str(out),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(raw), str(BASE), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(read_history(out / "history.jsonl")) == 5
    run_search(space("tpe", 12), BASE, out, evaluator=evaluator, log=quiet)
    assert choices(out) == choices(tmp_path / "whole")


def test_other_settings_on_the_same_output_dir_are_refused(tmp_path, evaluator):
    run_search(space("random", 3), BASE, tmp_path, evaluator=evaluator, log=quiet)
    with pytest.raises(ValueError, match="holds a search with algorithm 'random', not 'tpe'; allowed: the same"):
        run_search(space("tpe", 3), BASE, tmp_path, evaluator=evaluator, log=quiet)


def test_pareto_front_and_best():
    rec = lambda n, s, p, lat: {"n": n, "choices": {"w": n}, "status": "ok", "score": s, "params": p,  # noqa: E731
                                "flops": 0, "latency_ms": lat, "duplicate_of": None}  # fmt: skip
    records = [rec(0, 0.9, 100, 1.0), rec(1, 0.8, 50, 1.0), rec(2, 0.8, 60, 1.0), rec(3, 0.7, 200, 0.5),
               rec(4, 0.95, 300, 2.0), {**rec(5, 0.99, 10, 0.1), "status": "rejected", "score": None}]  # fmt: skip
    assert [r["n"] for r in pareto_front(records)] == [4, 0, 1, 3]  # 2 is dominated by 1; rejected never count


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    nas_cmd.add_parser(parser.add_subparsers())
    return run_command(parser.parse_args(["nas", *argv]))


def test_cli_document_000_as_written_is_refused_before_training(tmp_path, capsys):
    doc = {"search_space": [{"layer_type": ["Conv", "Transformer"], "channels": [64, 128, 256],
                             "activation": ["ReLU", "Swish"]}],
           "constraints": {"max_params": "10M", "target_device": "v100"},
           "optimizer": {"algorithm": "reinforce", "sample_size": 100}}  # fmt: skip
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(doc))
    import torch

    if torch.cuda.is_available() and "v100" in torch.cuda.get_device_name(0).lower():
        pytest.skip("a V100 is here")
    assert cli(str(tmp_path / "space.yaml"), "--config", str(BASE), "--output-dir", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: constraints.target_device: 'v100' is not on this machine") and "\n" not in err
    assert not (tmp_path / "out" / "history.jsonl").exists()


def test_cli_proxy_training_end_to_end_and_best_yaml_trains(tmp_path, capsys):
    """Two candidates, each 1 epoch of a real Trainer on 128 digits; then `deepseek train best.yaml`."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "search_space": [{"layer_type": "Conv", "channels": [4, 8], "activation": "Swish"}],
        "constraints": {"max_params": "10M", "target_device": "cpu"},
        "optimizer": {"algorithm": "evolution", "population": 2, "tournament": 1},
        "evaluation": {"train_size": 128, "val_size": 64}}))  # fmt: skip
    base = yaml.safe_load(BASE.read_text())
    del base["scheduler"]  # its 20 warm-up steps are longer than a proxy run of 2 steps
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    out = tmp_path / "out"
    code = cli(
        str(tmp_path / "space.yaml"),
        "--config",
        str(tmp_path / "base.yaml"),
        "--output-dir",
        str(out),
        "--sample-size",
        "2",
        "--epochs",
        "1",
        "--seed",
        "0",
    )
    printed, errors = capsys.readouterr()
    assert code == 0, errors
    records = read_history(out / "history.jsonl")
    assert len(records) == 2 and all(r["status"] == "ok" and 0 <= r["score"] <= 1 for r in records)
    first = records[0]
    assert first["latency_source"] == "measured on cpu" and first["latency_ms"] > 0
    metrics = Path(first["run_dir"]) / "metrics.jsonl"
    assert metrics.is_file() and yaml.safe_load((Path(first["run_dir"]) / "config.yaml").read_text())["data"] == {
        **yaml.safe_load((Path(first["run_dir"]) / "config.yaml").read_text())["data"], "name": "subset",
        "dataset": "digits", "train_size": 128, "val_size": 64}  # fmt: skip
    assert "Pareto front" in printed and json.loads((out / "pareto.json").read_text())["front"]
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["model"]["name"] == "deepseek.search.nas.builders:nas_stack" and best["data"]["name"] == "digits"
    from deepseek.cli.main import main

    # best.yaml trains the full base config; here only its first 64 digits for one epoch
    small = {**best, "data": {**best["data"], "name": "subset", "dataset": "digits", "train_size": 64},
             "train": {**best["train"], "max_epochs": 1}}  # fmt: skip
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small))
    assert main(["train", str(tmp_path / "small.yaml"), "--run-dir", str(tmp_path / "best_run")]) == 0
    assert (tmp_path / "best_run" / "final").is_dir()


def test_model_family_search_keeps_the_registered_name_and_base_arguments(tmp_path):
    """simple_cnn's width searched: best.yaml names simple_cnn with the base config's other arguments."""
    fam = parse_space({"model": "simple_cnn", "search_space": {"width": [8, 16, 32], "dropout": [0.0, 0.2]},
                       "constraints": {"max_params": "10k", "latency": "approximate_by_flops", "device_flops": "1T"},
                       "optimizer": {"algorithm": "random", "sample_size": 6, "seed": 0}})  # fmt: skip
    summary = run_search(fam, BASE, tmp_path, evaluator=lambda c, spec: c["width"] - 10 * c["dropout"], log=quiet)
    records = read_history(tmp_path / "history.jsonl")
    assert all((r["status"] == "rejected") == (r["params"] > 10_000) for r in records)
    assert summary["best"]["choices"]["width"] == max(r["choices"]["width"] for r in records if r["status"] == "ok")
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())["model"]
    assert best == {"name": "simple_cnn", "in_channels": 1, "num_classes": 10, "width": best["width"],
                    "dropout": best["dropout"]}  # fmt: skip
