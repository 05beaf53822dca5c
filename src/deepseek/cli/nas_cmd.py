"""``deepseek nas SPACE.yaml --config BASE.yaml --output-dir DIR``: architecture search (see docs/search.md).

SPACE.yaml is document 000's form (``search_space`` a list of blocks, ``constraints``, ``optimizer``) or a
model family's (``model:`` plus a mapping of its arguments to choices); the flags override its
``optimizer`` and ``evaluation`` settings. Started again on the same ``--output-dir`` it resumes.
"""

from __future__ import annotations

import argparse
from typing import Any

from deepseek.cli.errors import UsageError


def cmd_nas(args: argparse.Namespace) -> int:
    from pathlib import Path

    from deepseek.search.nas.algorithms import ALGORITHMS
    from deepseek.search.nas.run import run_search
    from deepseek.search.nas.space import check_algorithm, load_space

    space = load_space(args.space)
    if args.algorithm is not None:
        space.algorithm = args.algorithm
        if args.algorithm not in ALGORITHMS:
            raise UsageError(f"--algorithm: {args.algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    for flag, value in (("--sample-size", args.sample_size), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            raise UsageError(f"{flag}: {value}; allowed: a positive integer")
    if args.seed is not None and args.seed < 0:
        raise UsageError(f"--seed: {args.seed}; allowed: a non-negative integer")
    space.sample_size = args.sample_size or space.sample_size
    space.seed = space.seed if args.seed is None else args.seed
    check_algorithm(space)  # another algorithm than the YAML's may not take its options
    config = args.config or space.config
    if config is None:
        raise UsageError("--config: missing; allowed: the base run config whose data (and training settings) the "
                         "candidates use, or 'config:' in the search YAML")  # fmt: skip
    if isinstance(config, str) and not Path(config).is_file():
        raise UsageError(f"--config: '{config}': file not found")
    run_search(space, config, args.output_dir, epochs=args.epochs, evaluator=args.evaluator,
               latency_table=args.latency_table)  # fmt: skip
    return 0


def add_parser(sub: Any) -> None:
    # deepseek.search imports optuna (the `search` extra): the parser of every command is built on each call, so it
    # must not need it; cmd_nas checks --algorithm against ALGORITHMS (one line, exit code 2)
    p = sub.add_parser(
        "nas",
        help="architecture search from a YAML space, constraints checked before training",
        description="Search architectures: sample_size candidates, each checked against the "
        "constraints (params, FLOPs, latency) and then proxy-trained (or scored by --evaluator); "
        "writes history.jsonl, pareto.json and best.yaml to --output-dir, and resumes there.",
    )
    p.add_argument("space", help="the search YAML (search_space, constraints, optimizer)")
    p.add_argument("--config", help="the base run config: its data, optimizer and training settings")
    p.add_argument("--output-dir", required=True, help="where the history, Pareto front and best.yaml go")
    p.add_argument("--algorithm", help="overrides optimizer.algorithm: reinforce, evolution, random or tpe")
    p.add_argument("--sample-size", type=int, help="the budget: candidates sampled (overrides optimizer.sample_size)")
    p.add_argument("--epochs", type=int, help="proxy training epochs per candidate (default evaluation.epochs or 1)")
    p.add_argument("--seed", type=int, help="the searcher's seed (overrides optimizer.seed)")
    p.add_argument("--evaluator", help="score candidates with this function instead of training: pkg.module:fn, "
                   "called fn(candidate, model_spec) -> float")  # fmt: skip
    p.add_argument("--latency-table", help="YAML or CSV of latencies on the target device (ms)")
    p.set_defaults(fn=cmd_nas)
