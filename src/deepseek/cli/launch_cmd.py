"""``deepseek launch``: ``deepseek train`` under torchrun, on one node or several, with elastic restarts.

The launcher starts this module as torchrun's agent (``python -m deepseek.cli.launch_cmd TORCHRUN-ARGS``):
torchrun itself, but a rank that dies ends the job with one ``error:`` line naming the rank and how it
died, instead of torchrun's multi-line report.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from deepseek.cli.errors import UsageError

AGENT_MODULE = "deepseek.cli.launch_cmd"


def add_launch_options(p: argparse.ArgumentParser) -> None:
    """The options of ``deepseek launch`` beyond those it shares with ``deepseek train``."""
    p.add_argument("--nproc", type=int, required=True, help="processes (ranks) on this node")
    p.add_argument("--nnodes", type=int, default=1, help="nodes in the job (default 1: this machine alone)")
    p.add_argument("--node-rank", type=int, default=0, help="this node's number, 0..nnodes-1 (node 0 hosts "
                   "the rendezvous and checks the run directory)")  # fmt: skip
    p.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="node 0's address and a free port on it, the "
                   "same on every node (needed with --nnodes > 1)")  # fmt: skip
    p.add_argument("--rdzv-id", help="the job's rendezvous id, the same on every node (default: from --run-dir)")
    p.add_argument("--max-restarts", type=int, default=0, help="restart all ranks up to K times after a rank "
                   "fails; each restart resumes from the run's newest checkpoint (default 0: a failure ends the job)")  # fmt: skip


def check_launch_options(args: argparse.Namespace) -> None:
    """One-line UsageErrors for option values torchrun would reject late (or not at all)."""
    if args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: the number of ranks on this node must be 1 or more")
    if args.nnodes < 1:
        raise UsageError(f"--nnodes {args.nnodes}: the number of nodes must be 1 or more")
    if not 0 <= args.node_rank < args.nnodes:
        raise UsageError(f"--node-rank {args.node_rank}: must be 0..{args.nnodes - 1} for --nnodes {args.nnodes}")
    if args.max_restarts < 0:
        raise UsageError(f"--max-restarts {args.max_restarts}: must be 0 or more")
    if args.rdzv_endpoint is not None and not re.fullmatch(r"[^\s:]+:\d+|\[[0-9a-fA-F:]+\]:\d+", args.rdzv_endpoint):
        raise UsageError(f"--rdzv-endpoint '{args.rdzv_endpoint}': expected HOST:PORT, e.g. node0:29500")
    if args.nnodes > 1 and args.rdzv_endpoint is None:
        raise UsageError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address, the same on "
                         "every node)")  # fmt: skip
    if args.nnodes > 1 and not args.run_dir:
        raise UsageError(f"--nnodes {args.nnodes} needs --run-dir (every node must name the same run directory, "
                         "on a filesystem they share)")  # fmt: skip
    if args.max_restarts and args.overwrite:
        raise UsageError("--max-restarts resumes each restart from the run's checkpoints, which --overwrite would "
                         "delete again; delete the run directory first, or give a new --run-dir")  # fmt: skip
    if args.max_restarts and args.resume not in (None, "auto"):
        raise UsageError(f"--resume '{args.resume}' with --max-restarts: a restart resumes from the run's newest "
                         "checkpoint; use --resume auto (or continue the run directory holding that checkpoint)")  # fmt: skip


def rdzv_id(run_dir: str) -> str:
    """A rendezvous id every node derives alike from the run directory's name."""
    return "deepseek-" + re.sub(r"[^A-Za-z0-9_-]", "_", run_dir.rstrip("/").rsplit("/", 1)[-1])


def agent_command(args: argparse.Namespace, run_id: str) -> list[str]:
    """The torchrun agent with its rendezvous and rank options, before the module the ranks run."""
    cmd = [sys.executable, "-m", AGENT_MODULE]
    if args.nnodes == 1 and args.rdzv_endpoint is None:
        cmd += ["--standalone"]
    else:
        # c10d numbers the ranks itself (torchrun ignores --node-rank there): the node rank only says
        # which node hosts the rendezvous store, so that it does not depend on who binds the port first
        cmd += [f"--nnodes={args.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={args.rdzv_endpoint}",
                f"--rdzv-id={run_id}", f"--rdzv-conf=is_host={int(args.node_rank == 0)}"]  # fmt: skip
    cmd += [f"--nproc-per-node={args.nproc}"]
    if args.max_restarts:
        cmd += [f"--max-restarts={args.max_restarts}"]
    return cmd


_VALUED = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id", "--max-restarts", "--run-dir",
           "--resume", "--progress")  # fmt: skip


# commands `deepseek launch` runs on every rank instead of `deepseek train`
FORWARDED = ("comm", "tune")


def split_forwarded(argv: Sequence[str]) -> tuple[list[str], str, list[str]] | None:
    """``launch [OPTIONS] NAME ARGS...`` with NAME in :data:`FORWARDED` -> (``launch [OPTIONS]``, NAME, ``ARGS``):
    ``deepseek NAME`` under torchrun instead of ``deepseek train``; None when the first positional after
    ``launch`` is not one of them."""
    argv = list(argv)
    if not argv or argv[0] != "launch":
        return None
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in _VALUED else 1  # `--nproc 4` takes the next item; `--nproc=4` does not
    return (argv[:i], argv[i], argv[i + 1 :]) if i < len(argv) and argv[i] in FORWARDED else None


def split_comm(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """``launch [OPTIONS] comm ARGS...`` -> (``launch [OPTIONS]``, ``ARGS``); None otherwise."""
    split = split_forwarded(argv)
    return (split[0], split[2]) if split is not None and split[1] == "comm" else None


def forwarded_command(args: argparse.Namespace, name: str, argv: Sequence[str]) -> list[str]:
    """The agent's command line for ``deepseek launch ... NAME ARGS``: ``deepseek NAME ARGS`` on every rank
    (``tune``: rank 0 samples each trial and the other ranks train it with it)."""
    if args.nnodes > 1 and not args.run_dir:
        args.run_dir = name  # no run directory is written here; only check_launch_options asks for one
    check_launch_options(args)
    return [*agent_command(args, args.rdzv_id or f"deepseek-{name}"), "-m", "deepseek", name, *argv]


def comm_command(args: argparse.Namespace, comm_argv: Sequence[str]) -> list[str]:
    """The agent's command line for ``deepseek launch ... comm ARGS``: ``deepseek comm ARGS`` on every rank."""
    return forwarded_command(args, "comm", comm_argv)


def torchrun_command(args: argparse.Namespace, config: str, overrides: Sequence[str], run_dir: str) -> list[str]:
    """The agent's command line: torchrun's arguments, then ``deepseek train`` with the run's arguments.

    One node without an endpoint runs ``--standalone`` (a local rendezvous on a free port); otherwise
    torchrun's c10d rendezvous at ``--rdzv-endpoint``, hosted by node 0. With ``--max-restarts`` every
    attempt runs with ``--resume auto``: the first starts fresh in a run directory without checkpoints,
    each restart continues from the newest one.
    """
    cmd = agent_command(args, args.rdzv_id or rdzv_id(run_dir))
    cmd += ["-m", "deepseek", "train", config, *overrides, "--run-dir", run_dir]
    resume = "auto" if args.max_restarts else args.resume
    if resume:
        cmd += ["--resume", resume]
    if args.overwrite:
        cmd += ["--overwrite"]
    if args.progress:
        cmd += ["--progress", args.progress]
    return cmd


def run_agent(cmd: Sequence[str], announce: bool = True) -> int:
    """Run the torchrun agent ``cmd`` (from :func:`torchrun_command`, :func:`comm_command`, ...) and return its exit
    code; the agent dies with this process (and its ranks with it): a killed launch leaves no orphans."""
    import os
    import subprocess

    from deepseek.train.distributed import die_with_parent

    if announce:
        print("launching: " + " ".join(cmd), flush=True)
    launcher = os.getpid()
    return subprocess.call(list(cmd), preexec_fn=lambda: die_with_parent(launcher))


def describe_failure(rank: int, failure: Any) -> str:
    """One line for torchrun's first failed rank (a ``ProcessFailure``): which rank, and how it ended."""
    how = (f"was killed by signal {failure.signal_name()}" if failure.exitcode < 0
           else f"exited with code {failure.exitcode}")  # fmt: skip
    return f"rank {rank} (local rank {failure.local_rank}, pid {failure.pid}) {how}; the job was stopped"


def agent_main(argv: Sequence[str]) -> int:
    """torchrun with ``argv``; a failed job ends with one ``error:`` line on stderr and exit code 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(list(argv)))
    except ChildFailedError as exc:
        print(f"error: {describe_failure(*exc.get_first_failure())}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(agent_main(sys.argv[1:]))
