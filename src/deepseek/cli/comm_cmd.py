"""``deepseek comm bench | predict``: the collective benchmark with its alpha-beta fit, and the cost model's predictions.

``deepseek comm bench [--ops ...] [--sizes 1K..256M] [--iters N] [--json PATH] [--nproc N]``: under torchrun
(``WORLD_SIZE`` set) every rank joins the process group (NCCL with CUDA, else gloo), runs
:func:`deepseek.distributed.bench.run_bench`, and rank 0 prints nccl-tests' table and the fit of
``alpha``/``beta``/``gamma`` (:func:`deepseek.distributed.fit.fit_link`, over all measured ops at once and per
op). Outside torchrun, ``--nproc N`` starts the same command on N local ranks through ``deepseek launch``'s
torchrun agent. ``--json`` writes ``{"backend", "world", "alpha", "beta", "gamma", "rows", "fit", "fit_per_op"}``
(the constants at the top level are what ``deepseek comm predict --interconnect local:FILE`` reads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from deepseek.cli.errors import UsageError

DEFAULT_SIZES = "1K..64M"
DEFAULT_OPS = "all_reduce,reduce_scatter,all_gather,broadcast,all_to_all"


def add_parser(sub: Any) -> None:
    """``deepseek comm`` with its ``bench`` and ``predict`` subcommands."""
    p = sub.add_parser("comm", help="collective benchmark and communication cost model",
                       description="Measure collectives (bench) or predict their time from the cost model (predict).")  # fmt: skip
    csub = p.add_subparsers(dest="comm_command", metavar="ACTION", required=True)
    b = csub.add_parser(
        "bench",
        help="time collectives per message size (nccl-tests' definitions) and fit latency and bandwidth",
        description="Time all-reduce, reduce-scatter, all-gather, broadcast and all-to-all per message size on "
        "the current process group (under torchrun / deepseek launch, or on --nproc local ranks), print time, "
        "algorithm and bus bandwidth, and fit the alpha-beta cost model by least squares with its error.",
    )
    b.add_argument("--ops", default=DEFAULT_OPS, help=f"comma list of ops, or 'all' (default: {DEFAULT_OPS})")
    b.add_argument("--sizes", default=DEFAULT_SIZES, help="message sizes in bytes: LOW..HIGH doubling, or a comma "
                   f"list; K/M/G are binary (default: {DEFAULT_SIZES})")  # fmt: skip
    b.add_argument("--iters", type=int, default=50, help="timed calls per size at most (default 50)")
    b.add_argument("--warmup", type=int, default=5, help="warm-up calls per size at most (default 5)")
    b.add_argument("--budget-s", type=float, default=0.2, help="seconds of timed calls per size, about (default "
                   "0.2): big messages run fewer than --iters calls")  # fmt: skip
    b.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto",
                   help="process group backend (default: nccl with CUDA, else gloo)")  # fmt: skip
    b.add_argument("--nproc", type=int, help="outside torchrun: run on N local ranks (started with torchrun)")
    b.add_argument("--json", metavar="PATH", help="also write the rows and the fit as JSON (rank 0)")
    b.set_defaults(fn=cmd_bench)
    try:
        from deepseek.cli.comm_predict_cmd import add_predict_parser
    except ImportError:  # written by another change; until it lands `comm predict` says so in one line
        q = csub.add_parser("predict", help="(not available in this build)")
        q.set_defaults(fn=_no_predict)
    else:
        add_predict_parser(csub)


def _no_predict(args: argparse.Namespace) -> int:
    raise UsageError("comm predict: not available in this build (deepseek.cli.comm_predict_cmd is missing)")


def _check(args: argparse.Namespace) -> tuple[list[str], list[int]]:
    from deepseek.distributed.bench import parse_ops, parse_sizes

    try:
        ops, sizes = parse_ops(args.ops), parse_sizes(args.sizes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.iters < 1:
        raise UsageError(f"--iters {args.iters}: must be 1 or more")
    if args.warmup < 0:
        raise UsageError(f"--warmup {args.warmup}: must be 0 or more")
    if not args.budget_s > 0:
        raise UsageError(f"--budget-s {args.budget_s}: must be more than 0")
    if args.nproc is not None and args.nproc < 2:
        raise UsageError(f"--nproc {args.nproc}: a collective benchmark needs 2 ranks or more")
    return ops, sizes


def cmd_bench(args: argparse.Namespace) -> int:
    ops, sizes = _check(args)
    if "WORLD_SIZE" in os.environ:
        return _bench_rank(args, ops, sizes)
    if args.nproc is None:
        raise UsageError("--nproc: not under torchrun (no WORLD_SIZE); give --nproc N to run on N local ranks, "
                         "or run under `deepseek launch --nproc N comm bench`")  # fmt: skip
    return _start_ranks(args)


def _start_ranks(args: argparse.Namespace) -> int:
    """This command on ``--nproc`` local ranks under the torchrun agent of ``deepseek launch``."""
    from deepseek.cli.launch_cmd import AGENT_MODULE, run_agent

    forwarded = ["--ops", args.ops, "--sizes", args.sizes, "--iters", str(args.iters), "--warmup", str(args.warmup),
                 "--budget-s", str(args.budget_s), "--backend", args.backend]  # fmt: skip
    if args.json:
        forwarded += ["--json", str(Path(args.json).resolve())]
    cmd = [sys.executable, "-m", AGENT_MODULE, "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "deepseek", "comm", "bench", *forwarded]  # fmt: skip
    return run_agent(cmd, announce=False)


def _bench_rank(args: argparse.Namespace, ops: list[str], sizes: list[int]) -> int:
    import torch
    import torch.distributed as dist

    from deepseek.distributed.bench import format_table, run_bench
    from deepseek.train.distributed import adopt_launcher_env, die_with_torchrun_agent

    die_with_torchrun_agent()
    adopt_launcher_env()
    backend = args.backend if args.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UsageError("--backend nccl: no CUDA device here; allowed: gloo (or auto)")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend)
    try:
        rows = run_bench(ops, sizes, iters=args.iters, warmup=args.warmup, budget_s=args.budget_s)
        if dist.get_rank() == 0:
            report = bench_report(rows, backend)
            print(format_table(rows, backend))
            print(describe_fits(report))
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()
    return 0


def bench_report(rows: list[Any], backend: str) -> dict[str, Any]:
    """The JSON report: rows, the fit over all rows (its constants also at the top level) and one per op."""
    from deepseek.distributed.fit import fit_link

    def fit(selected: list[Any]) -> dict[str, Any]:
        result = fit_link([r.op for r in selected], [r.world for r in selected], [r.nbytes for r in selected],
                          [r.time_s for r in selected])  # fmt: skip
        return {**result.to_dict(), "ops": sorted({r.op for r in selected})}

    world = rows[0].world if rows else 1
    report: dict[str, Any] = {"backend": backend, "world": world, "rows": [r.to_dict() for r in rows]}
    if world >= 2 and rows:
        report["fit"] = fit(rows)
        report.update({k: report["fit"][k] for k in ("alpha", "beta", "gamma")})
        report["fit_per_op"] = {op: fit([r for r in rows if r.op == op]) for op in dict.fromkeys(r.op for r in rows)}
    return report


def _describe(name: str, fit: dict[str, Any]) -> str:
    beta = f"{fit['beta_gbps']:.3f} GB/s" if fit["beta_gbps"] else "inf"
    gamma = (f"{1 / fit['gamma'] / 1e9:.3f} GB/s" if fit["gamma"] > 0 else "inf") if fit["gamma_identified"] else "n/a"
    worst = fit["max_rel_error_above_64k"]
    worst_text = f"{worst:.1%}" if worst is not None else "n/a"
    return (f"  {name:<16} alpha {fit['alpha'] * 1e6:9.2f} us   1/beta {beta:>13}   1/gamma {gamma:>13}   "
            f"max rel error >= 64 KiB {worst_text:>7}   rms {fit['rms_rel_error']:.1%}")  # fmt: skip


def describe_fits(report: dict[str, Any]) -> str:
    """The fit lines rank 0 prints below the table (1/gamma n/a: the ops measured cannot separate it)."""
    if "fit" not in report:
        return "fit: needs 2 ranks or more"
    lines = [f"alpha-beta fit (least squares on relative error; time = a alpha + b beta + c gamma, "
             f"deepseek.distributed.cost ring coefficients, {report['world']} ranks):",
             _describe("all ops", report["fit"])]  # fmt: skip
    lines += [_describe(op, fit) for op, fit in report["fit_per_op"].items()]
    return "\n".join(lines)
