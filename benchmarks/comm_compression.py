"""Gradient compression on a real task: bytes each rank sends per optimizer step and the final validation
accuracy, compressed vs uncompressed, side by side in one run.

    python benchmarks/comm_compression.py [--quick] [--nproc 2] [--ring-size N] [--epochs 15]

Each variant is the quick start (``configs/quickstart.yaml``: a CNN on scikit-learn's 8x8 digits, 1,437 train
and 360 validation images) trained by ``deepseek launch --nproc N`` with ``parallel.comm`` set: none (fp32 ring
all-reduce), fp16 and bf16 (error feedback), PowerSGD rank 2 and 4 (torch's hook, error feedback and warm
start), and with ``--ring-size`` smaller than ``--nproc`` the hybrid topology with PowerSGD on the inter-node
leg only. Bytes per step are the hooks' own count (``comm/bytes`` in ``metrics.jsonl``, the last record: PowerSGD
compresses from step 2 on); accuracy is ``summary.json``'s ``val.accuracy`` (the EMA weights, as the quick
start trains). Targets: PowerSGD rank 2-4 within 0.5 accuracy points of fp32 with at least 10x fewer bytes.
``--quick``: 3 epochs, fp32 and PowerSGD rank 2 only (a smoke run; its accuracies are not the comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "quickstart.yaml"
BYTES_TARGET, POINTS_TARGET = 10.0, 0.5


def variants(quick: bool, nproc: int, ring_size: int | None, only: list[str] | None) -> dict[str, list[str]]:
    """Variant name -> ``parallel.comm`` overrides."""
    runs = {
        "fp32": ["parallel.comm.compression=none"],
        "fp16": ["parallel.comm.compression=fp16"],
        "bf16": ["parallel.comm.compression=bf16"],
        "powersgd-2": ["parallel.comm.compression=powersgd", "parallel.comm.powersgd_rank=2"],
        "powersgd-4": ["parallel.comm.compression=powersgd", "parallel.comm.powersgd_rank=4"],
    }
    if ring_size is not None and ring_size < nproc:
        hybrid = ["parallel.comm.topology=hybrid", f"parallel.comm.ring_size={ring_size}"]
        runs["hybrid fp32"] = [*hybrid, "parallel.comm.compression=none"]
        runs["hybrid powersgd-4 inter-node only"] = [
            *hybrid, "parallel.comm.compression=powersgd", "parallel.comm.powersgd_rank=4",
            "parallel.comm.inter_node_only=true",
        ]  # fmt: skip
    if quick:
        only = ["fp32", "powersgd-2"]
    if only:
        if unknown := sorted(set(only) - set(runs)):
            raise SystemExit(f"error: --only {unknown[0]}; allowed: {', '.join(runs)}")
        runs = {k: v for k, v in runs.items() if k in only or k == "fp32"}
    return runs


def train(overrides: list[str], nproc: int, epochs: int, run_dir: Path) -> dict[str, float]:
    """One ``deepseek launch`` run; its last ``comm/*`` record and final validation accuracy."""
    cmd = [sys.executable, "-m", "deepseek", "launch", "--nproc", str(nproc), str(CONFIG), *overrides,
           f"train.max_epochs={epochs}", "logging.every_steps=5", "logging.tensorboard=false",
           "checkpoint.every_steps=null", "checkpoint.every_minutes=null", "checkpoint.save_best=false",
           "--run-dir", str(run_dir), "--progress", "off"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    comm = [r for r in records if "comm/bytes" in r][-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"bytes": comm["comm/bytes"], "inter": comm["comm/bytes_inter"], "share": comm["comm/share"],
            "accuracy": summary["val"]["accuracy"], "steps": summary["steps"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs, fp32 and PowerSGD rank 2 only")
    parser.add_argument("--nproc", type=int, default=2, help="gloo processes (ranks)")
    parser.add_argument("--ring-size", type=int, help="ranks per node for the hybrid rows (< --nproc adds them)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--only", help="comma list of variants (fp32 always runs: the baseline)")
    args = parser.parse_args()
    epochs = 3 if args.quick else args.epochs
    runs = variants(args.quick, args.nproc, args.ring_size, args.only.split(",") if args.only else None)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in runs.items():
            rows[name] = train(overrides, args.nproc, epochs, Path(tmp) / f"run{len(rows)}")
    base = rows["fp32"]
    print(f"quick start (simple_cnn on digits), {args.nproc} gloo processes, {epochs} epochs = {base['steps']} steps; "
          "bytes: rank 0's per optimizer step once compressing (the last logged window)")
    print(f"{'variant':34s} {'bytes/step':>11s} {'vs fp32':>8s} {'to other nodes':>14s} {'vs fp32':>8s} "
          f"{'val acc':>8s} {'points':>7s}  verdict")
    for name, r in rows.items():
        ratio, points = base["bytes"] / r["bytes"], 100 * (r["accuracy"] - base["accuracy"])
        base_inter = rows["hybrid fp32"]["inter"] if name.startswith("hybrid") else base["inter"]
        inter_ratio = f"{base_inter / r['inter']:7.1f}x" if r["inter"] else "      -"
        verdict = ""
        if name.startswith("powersgd"):
            met = ratio >= BYTES_TARGET and abs(points) <= POINTS_TARGET
            verdict = ("met" if met else "missed") + f" (>= {BYTES_TARGET:.0f}x fewer bytes, within {POINTS_TARGET} points)"
        print(f"{name:34s} {r['bytes']:11,.0f} {ratio:7.1f}x {r['inter']:14,.0f} {inter_ratio} {r['accuracy']:8.4f} "
              f"{points:+7.2f}  {verdict}")


if __name__ == "__main__":
    main()
