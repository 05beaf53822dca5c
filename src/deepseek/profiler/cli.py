"""``python -m deepseek.profiler``: argument parsing and the one-line errors (exit code 2).

This package sits below :mod:`deepseek.cli` and may not import it, so bad input is a ValueError here (or a
RegistryError / ConfigError from the layers below) and :func:`main` prints it as ``error: ...`` with exit code 2,
the same contract as the ``deepseek`` command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from deepseek.profiler.metrics import METRICS, metrics_help

EPILOG = "`--metrics help` lists the metrics and what each means."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m deepseek.profiler",
        description="Profile a registered model on a synthetic batch: Chrome trace, flame graphs by Python stack "
        "and by module, summary.json and a table (time per module and operator, FLOPs, MFU, memory, step split).",
        epilog=EPILOG,
    )
    p.add_argument("--model", help="a registered model (`deepseek list models`)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--output_dir", "--output-dir", default="profile_results", help="where the files go "
                   "(default ./profile_results)")  # fmt: skip
    p.add_argument("--metrics", default="", help=f"comma list of extra metrics: {', '.join(METRICS)}; or 'help'")
    p.add_argument("--steps", type=int, default=5, help="profiled (recorded) steps (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="steps under the profiler before recording (default 1)")
    p.add_argument("--mode", default="train", help="train (forward, backward, AdamW step) or infer (default train)")
    p.add_argument("--precision", default="fp32", help="fp32, bf16-mixed, fp16-mixed, progressive or auto "
                   "(default fp32)")  # fmt: skip
    p.add_argument("--seq-len", "--seq_len", type=int, help="token axis of text models' inputs (default: the "
                   "template's example)")  # fmt: skip
    p.add_argument("--peak-tflops", "--peak_tflops", type=float, help="declared peak TFLOP/s for MFU (default: "
                   "from the GPU table, or the CPU's cores x FMA width x clock)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model builder overrides, e.g. "
                   "--set depth=2 dim=128 (values are YAML)")  # fmt: skip
    return p


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (e.g. depth=2)")
        out[key] = yaml.safe_load(value)
    return out


def run(args: argparse.Namespace) -> int:
    from deepseek.profiler.synthetic import profile_model
    from deepseek.profiler.table import print_summary

    if args.metrics.strip() == "help":
        print(metrics_help())
        return 0
    if not args.model:
        raise ValueError("--model is required (a registered model, e.g. bert_base; `deepseek list models`)")
    summary = profile_model(
        args.model, batch_size=args.batch_size, output_dir=args.output_dir, steps=args.steps, warmup=args.warmup,
        mode=args.mode, precision=args.precision, seq_len=args.seq_len, peak_tflops=args.peak_tflops,
        metrics=[args.metrics] if args.metrics else [], device=args.device, overrides=parse_overrides(args.set),
    )  # fmt: skip
    print_summary(summary)
    print(f"wrote {args.output_dir}/summary.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from deepseek.config import ConfigError
    from deepseek.registry import RegistryError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except (ValueError, RegistryError) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
