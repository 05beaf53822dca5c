"""NAS algorithms on a tabular benchmark: regret to the table's best architecture at equal budget.

Every algorithm of ``deepseek.search.nas`` (reinforce, evolution, random, tpe) searches the NAS-Bench-Graph
space (see ``nasbench_graph.py``: 7 categorical choices, 26,206 table architectures, tables shipped in the pip
package) for ``--budget`` evaluations, once per seed. An evaluation is a table look-up of the candidate's
validation performance (the search signal); the architecture returned is the evaluated one with the highest
validation performance, and its test performance is reported beside it (search on ``valid_perf``, report
``perf``: the table holds both, and searching on test performance would select on the test set).
``--signal perf`` searches on test performance anyway, as the package's own ``runnni.py`` and AutoGL's
NAS-Bench-Graph example reward it, for a like-for-like comparison with figures produced that way.

Constraints (``--quantile``, default 0.25): parameters <= that quantile of the table's parameter counts, and
latency <= that quantile of its latencies. A candidate that breaks the constraint is told ``None`` without
being evaluated and counted as rejected; a candidate with no table entry (all four ops ``skip``) is told
``None`` and counted as invalid. Neither uses budget (a rejected architecture is never trained), but a run
stops after ``--max-asks-factor`` x budget proposals so a searcher stuck on rejected candidates ends.

Regret = (the best ``--signal`` value among the table's architectures that satisfy the constraint) - (the
returned architecture's value), in percentage points; it is >= 0 and 0 means the
searcher found the constrained optimum. Every query counts toward the budget, repeats included.

    python benchmarks/nas_tabular.py [--budget 100] [--seeds 10] [--datasets cora citeseer ...] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # nasbench_graph.py sits beside this file

import nasbench_graph as nbg  # noqa: E402

from deepseek.search.nas.algorithms import make_searcher  # noqa: E402

ALGORITHMS = ("reinforce", "evolution", "random", "tpe")
HEADER = (
    f"{'dataset':<10} {'constraint':<12} {'algorithm':<10} {'budget':>6} {'seeds':>5} {'regret':>7} "
    f"{'std':>6} {'found%':>6} {'test%':>6} {'test_std':>8} {'sat_p%':>6} {'sat_l%':>6} {'rejected':>8} "
    f"{'invalid':>7} {'unique':>6}"
)


@dataclass
class RunResult:
    best_key: int | None  # the returned architecture (None: nothing evaluated)
    rejected: int  # candidates told None for breaking the constraint
    invalid: int  # candidates told None for having no table entry
    unique: int  # distinct table architectures evaluated


def run_search(
    table: dict[int, dict[str, float]],
    algorithm: str,
    seed: int,
    budget: int,
    constraint: nbg.Constraint,
    max_asks: int,
    signal: str = "valid_perf",
) -> RunResult:
    """One search: ask/tell until ``budget`` evaluations (or ``max_asks`` proposals) are spent."""
    searcher = make_searcher(algorithm, nbg.search_choices(), seed)
    best_key, best_valid = None, -math.inf
    evaluated = rejected = invalid = asks = 0
    seen: set[int] = set()
    while evaluated < budget and asks < max_asks:
        candidate = searcher.ask()
        asks += 1
        key = nbg.table_key(candidate)
        if key is None or key not in table:
            invalid += 1
            searcher.tell(candidate, None)
            continue
        info = table[key]
        if not constraint.satisfied(info):
            rejected += 1
            searcher.tell(candidate, None)
            continue
        evaluated += 1
        seen.add(key)
        searcher.tell(candidate, info[signal])
        if info[signal] > best_valid:  # ties keep the first found, as a real search would
            best_key, best_valid = key, info[signal]
    return RunResult(best_key, rejected, invalid, len(seen))


def _pct(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std of fractions, in percent (std 0 for one value)."""
    mean = 100 * statistics.fmean(xs)
    return mean, (100 * statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(
    table: dict[int, dict[str, float]],
    runs: list[RunResult],
    constraint: nbg.Constraint,
    para: nbg.Constraint,
    latency: nbg.Constraint,
    signal: str = "valid_perf",
) -> dict[str, float]:
    """One table row's numbers from the runs of one (dataset, constraint, algorithm)."""
    optimum = nbg.best_under(table, constraint, signal)[1][signal]
    found = [table[r.best_key] for r in runs if r.best_key is not None]
    # a run that evaluated nothing returned nothing: its regret is the whole optimum (counted, not hidden)
    regrets = [optimum - (table[r.best_key][signal] if r.best_key is not None else 0.0) for r in runs]
    regret, regret_std = _pct(regrets)
    test, test_std = _pct([f["perf"] for f in found]) if found else (math.nan, math.nan)
    return {
        "regret": regret,
        "std": regret_std,
        "found": 100 * sum(g <= 1e-12 for g in regrets) / len(runs),
        "test": test,
        "test_std": test_std,
        "sat_p": 100 * sum(para.satisfied(f) for f in found) / len(runs),
        "sat_l": 100 * sum(latency.satisfied(f) for f in found) / len(runs),
        "rejected": statistics.fmean(r.rejected for r in runs),
        "invalid": statistics.fmean(r.invalid for r in runs),
        "unique": statistics.fmean(r.unique for r in runs),
    }


def format_row(dataset: str, constraint: str, algorithm: str, budget: int, seeds: int, s: dict[str, float]) -> str:
    return (
        f"{dataset:<10} {constraint:<12} {algorithm:<10} {budget:>6} {seeds:>5} {s['regret']:>7.3f} "
        f"{s['std']:>6.3f} {s['found']:>6.0f} {s['test']:>6.2f} {s['test_std']:>8.2f} {s['sat_p']:>6.0f} "
        f"{s['sat_l']:>6.0f} {s['rejected']:>8.1f} {s['invalid']:>7.1f} {s['unique']:>6.1f}"
    )


def quantile_constraints(table: dict[int, dict[str, float]], q: float) -> list[nbg.Constraint]:
    """No constraint, params <= the q-quantile of the table's, latency <= the q-quantile of the table's."""
    para = sorted(v["para"] for v in table.values())
    latency = sorted(v["latency"] for v in table.values())
    at = lambda xs: xs[round(q * (len(xs) - 1))]  # noqa: E731
    return [
        nbg.Constraint("none"),
        nbg.Constraint("params", "para", at(para)),
        nbg.Constraint("latency", "latency", at(latency)),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, default=100, help="evaluations per search (default 100)")
    parser.add_argument("--seeds", type=int, default=10, help="searches per algorithm (seeds 0..N-1)")
    parser.add_argument("--datasets", nargs="+", default=["cora", "citeseer", "pubmed", "computers"])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--quantile", type=float, default=0.25, help="constraint limits as table quantiles")
    parser.add_argument("--max-asks-factor", type=int, default=20)
    parser.add_argument("--signal", choices=("valid_perf", "perf"), default="valid_perf",
                        help="the score searched on and the regret's field (perf: test performance, as the "
                        "package's runnni.py and AutoGL's example reward)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 datasets, 3 seeds, budget 20 (for the test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.budget, args.seeds, args.datasets = 20, 3, ["cora", "citeseer"]
    for name in ("budget", "seeds", "max_asks_factor"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if not 0.0 < args.quantile <= 1.0:
        parser.error(f"--quantile {args.quantile}: must be in (0, 1]")
    for d in args.datasets:
        if d not in nbg.DATASETS:
            parser.error(f"--datasets {d}: allowed {', '.join(nbg.DATASETS)}")
    for a in args.algorithms:
        if a not in ALGORITHMS:
            parser.error(f"--algorithms {a}: allowed {', '.join(ALGORITHMS)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    start = time.perf_counter()
    print(
        f"NAS-Bench-Graph (nas-bench-graph light tables), budget {args.budget} evaluations, seeds 0..{args.seeds - 1}"
    )
    print(f"searched on {args.signal}; constraints: params / latency <= the {args.quantile:g} quantile of the table\n")
    rows, lines = [], []
    for dataset in args.datasets:
        table = nbg.load_table(dataset)
        constraints = quantile_constraints(table, args.quantile)
        top = nbg.best_under(table, constraints[0], args.signal)[1]
        for c in constraints:
            key, opt = nbg.best_under(table, c, args.signal)
            limit = "" if c.field is None else f" (limit {c.limit:.4g}{' M' if c.field == 'para' else ' s'})"
            share = sum(c.satisfied(v) for v in table.values())
            print(
                f"{dataset} {c.name}{limit}: {share} of {len(table)} archs satisfy; optimum key {key} valid "
                f"{100 * opt['valid_perf']:.2f}% test {100 * opt['perf']:.2f}%; unconstrained optimum "
                f"{'satisfies' if c.satisfied(top) else 'breaks'} it; random search's exact expected regret "
                f"{100 * nbg.expected_random_regret(table, c, args.budget, args.signal):.3f}"
            )
            for algorithm in args.algorithms:
                runs = [
                    run_search(table, algorithm, seed, args.budget, c, args.max_asks_factor * args.budget, args.signal)
                    for seed in range(args.seeds)
                ]
                s = summarize(table, runs, c, constraints[1], constraints[2], args.signal)
                rows.append({"dataset": dataset, "constraint": c.name, "algorithm": algorithm, **s})
                lines.append(format_row(dataset, c.name, algorithm, args.budget, args.seeds, s))
    print(f"\nregret/std: percentage points of {args.signal}; test%: test performance (perf) of the returned arch;")
    print("found%: seeds that returned the constrained optimum; sat_p%/sat_l%: seeds whose returned arch meets")
    print("the params/latency limit; rejected/invalid/unique: mean per search\n")
    print(HEADER)
    print("\n".join(lines))
    print(f"\n{len(rows) * args.seeds} searches in {time.perf_counter() - start:.1f} s")
    return rows


if __name__ == "__main__":
    main()
