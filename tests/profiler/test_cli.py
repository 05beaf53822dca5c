"""``python -m deepseek.profiler``: one-line errors with exit code 2, ``--metrics help``, a synthetic batch for
every registered model from its template, and a whole run from the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import deepseek.models as zoo
from deepseek.profiler.cli import main
from deepseek.profiler.inputs import example_inputs
from deepseek.profiler.metrics import METRICS


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--model", "no_such_model"], "--model 'no_such_model': not a registered model; allowed:"),
        (["--model", "mlp", "--steps", "0"], "--steps 0: must be 1 or more"),
        (["--model", "mlp", "--mode", "serve"], "--mode 'serve': allowed: train, infer"),
        (["--model", "mlp", "--precision", "fp8"], "--precision 'fp8': allowed:"),
        (["--model", "mlp", "--metrics", "gpu_util,flops_x"], "--metrics: flops_x is not a metric; allowed:"),
        (["--model", "mlp", "--batch_size", "0"], "--batch_size 0: must be 1 or more"),
        (["--model", "mlp", "--set", "depth"], "--set 'depth': expected KEY=VALUE"),
        (["--model", "mlp", "--peak-tflops", "-1"], "--peak-tflops -1.0: must be a positive number"),
        ([], "--model is required"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_code_2(argv, named, capsys, tmp_path):
    assert main([*argv, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1


def test_metrics_help_lists_every_metric_with_its_meaning(capsys):
    assert main(["--metrics", "help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(METRICS)
    assert all(("[CUDA]" in line) == METRICS[line.split()[0]].cuda_only for line in lines)


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_registered_model_gets_a_batch_of_its_template_shape(name):
    example = zoo.template(name)["example"]
    batch, info = example_inputs(example, batch_size=3, seq_len=5)
    if "graph" in example:  # a graph batch: the disjoint union of 3 graphs
        assert int(batch.batch.max()) + 1 == 3 and batch.x.shape[1] == example["graph"]["features"]
    else:
        tensors = [t for t in torch.utils._pytree.tree_leaves(batch) if isinstance(t, torch.Tensor)]
        assert tensors and all(t.shape[0] == 3 for t in tensors)
    assert info["tokens"] == (3 * 5 if info["seq_len"] is not None else 3)


def test_the_command_runs_a_graph_model_in_inference_and_reports_cuda_only_metrics(tmp_path):
    out = tmp_path / "p"
    cmd = [
        sys.executable,
        "-m",
        "deepseek.profiler",
        "--model",
        "graph_transformer",
        "--batch_size",
        "4",
        "--mode",
        "infer",
        "--steps",
        "2",
        "--output_dir",
        str(out),
        "--metrics",
        "gpu_util,nvtx_range,kernel_launch",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "infer" and summary["split_s"]["backward"] == 0 and summary["flops"]["per_step"] > 0
    if not torch.cuda.is_available():
        for name in ("gpu_util", "nvtx_range", "kernel_launch"):
            assert f"{name}: needs CUDA (this run is on cpu); skipped" in proc.stdout
