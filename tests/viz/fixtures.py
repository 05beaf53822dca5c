"""Run directories for the visualizer's tests, written by the formats of docs/visualizer.md (issue 19's spec)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

EDGES = [-10.0, -1.0, -0.01, 0.0, 0.01, 1.0, 10.0]  # 6 bins: symmetric, log-spaced in magnitude


def write_jsonl(path: Path, records: list[dict[str, Any]], tail: str = "") -> Path:
    """``records`` one JSON object a line, then ``tail`` as written (a half-written line when it has no newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def metrics_records(steps: int, loss0: float = 2.0) -> list[dict[str, Any]]:
    """A train record every step and a validation record every second step, like the Trainer's jsonl sink."""
    records: list[dict[str, Any]] = []
    for step in range(1, steps + 1):
        records.append({"step": step, "epoch": 0, "train/loss": loss0 / step, "lr": 0.01, "samples_per_s": 100.0 + step})
        if step % 2 == 0:
            records.append({"step": step, "epoch": 0, "val/loss": loss0 / step + 0.1, "val/accuracy": step / 10})
    return records


def stats_record(step: int, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """One ``stats.jsonl`` record of a two-layer model (the StatsRecorder's format)."""
    return {"step": step, "epoch": 0, "rank": rank, "world_size": world_size, "edges": EDGES,
            "grad_norm": {"fc1.weight": 0.5 / step, "fc1.bias": 0.1, "fc2.weight": 0.2 * (rank + 1)},
            "grad_norm_total": math.sqrt(0.25 / step**2 + 0.01 + 0.04 * (rank + 1) ** 2),
            "grad_hist": {"fc1": [0, 1, 5, 9, 5, 1], "fc2": [0, 0, 3, 3, 0, 0]},
            "act_hist": {"fc1": [1, 2, 30, 30, 2, step]}}  # fmt: skip


def profile_summary(files: dict[str, str] | None = None) -> dict[str, Any]:
    """A profiler ``summary.json`` (schema deepseek.profile/1) with the fields the page shows."""
    split = {"data_wait": 0.01, "forward": 0.02, "backward": 0.04, "optimizer": 0.005, "communication": 0.0,
             "other": 0.005}  # fmt: skip
    return {"schema": "deepseek.profile/1", "created": "2026-12-01T06:00:00", "model": "mlp", "mode": "train",
            "device": "cpu", "device_name": "cpu", "precision": "fp32", "batch_size": 8, "steps": 3,
            "step_time_s": {"mean": 0.08, "min": 0.07, "max": 0.09}, "split_s": split,
            "split_share": {k: v / 0.08 for k, v in split.items()},
            "modules": [{"name": "fc1", "forward_s": 0.01, "backward_s": 0.02, "flops": 1000},
                        {"name": "fc2", "forward_s": 0.005, "backward_s": 0.01, "flops": 500}],
            "operators": [{"name": "aten::mm", "calls": 6, "self_s": 0.03, "total_s": 0.03, "flops": 1500}],
            "flops": {"per_step": 4500, "dispatcher": 4500, "module_sum": 4500, "analytic": None,
                      "analytic_formula": None, "notes": []},
            "achieved_flops_per_s": 56250.0, "peak": {"flops_per_s": 1e11, "dtype": "fp32", "how": "2 cores x 16 x 3 GHz"},
            "mfu": 5.6e-07, "memory": {"peak_bytes": None, "device": "cpu"},
            "bottlenecks": [{"what": "backward", "share": 0.5, "advice": "raise the batch size"}],
            "metrics": {"gpu_util": "needs CUDA"},
            "files": files if files is not None else {"trace": "trace.json", "flamegraph_stack": "flamegraph_stack.svg",
                                                      "flamegraph_module": "flamegraph_module.svg", "stacks": "stacks.txt"}}  # fmt: skip


def write_profile(directory: Path, files: dict[str, str] | None = None) -> Path:
    """A profiler output directory: summary.json and a small flame graph SVG."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "summary.json").write_text(json.dumps(profile_summary(files)))
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    (directory / "flamegraph_stack.svg").write_text(svg)
    return directory / "summary.json"
