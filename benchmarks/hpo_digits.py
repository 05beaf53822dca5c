"""TPE vs random search at equal budget on a real config: best validation accuracy vs trials.

Each study is one ``deepseek.search.tune.tune`` call (the API behind ``deepseek tune``) on
``configs/mlp_digits.yaml`` (an MLP on scikit-learn's bundled 8x8 digits, no download) with short trials
(``train.max_epochs``, default 3) over a small space:

    optim.lr            float, log, 1e-4 .. 0.3
    optim.weight_decay  float, log, 1e-6 .. 0.1
    model.dropout       float, 0 .. 0.6

For each seed, one study per sampler (``tpe``: Optuna's multivariate TPE, its first 10 trials random;
``random``), no pruner, so every trial trains its full length and the budget is exactly ``--trials`` trials.
Each trial's value is its ``val/accuracy`` as the study records it; the table prints, per sampler, the best
value so far after n trials (mean and std over seeds) and how many seeds each sampler won at the end.

    python benchmarks/hpo_digits.py [--trials 30] [--seeds 4] [--epochs 3] [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "mlp_digits.yaml"
SPACE = """\
optim.lr: {type: float, low: 1.0e-4, high: 0.3, log: true}
optim.weight_decay: {type: float, low: 1.0e-6, high: 0.1, log: true}
model.dropout: {type: float, low: 0.0, high: 0.6}
"""
SAMPLERS = ("tpe", "random")


def run_study(sampler: str, seed: int, trials: int, epochs: int, work: Path) -> list[float]:
    """One study through ``deepseek.search.tune.tune`` (what ``deepseek tune`` runs); each COMPLETE trial's
    value (its ``val/accuracy`` as the study records it) in trial-number order."""
    from optuna.trial import TrialState

    from deepseek.search.tune import tune

    name = f"{sampler}-seed{seed}"
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer's and tune's per-trial lines: not this table
        study = tune(
            CONFIG, yaml.safe_load(SPACE), trials, study_name=name, study_dir=work / name, sampler=sampler,
            pruner="none", metric="val/accuracy", mode="max", seed=seed,
            overrides=[f"train.max_epochs={epochs}", "logging.every_steps=1000"], report=False,
        )  # fmt: skip
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    if len(done) != trials:
        states = [t.state.name for t in study.trials]
        raise RuntimeError(f"{name}: {len(done)} complete trials of {trials}: {states}")
    return [float(t.value) for t in done]


def best_so_far(values: list[float]) -> list[float]:
    out, best = [], -math.inf
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


def checkpoints(trials: int) -> list[int]:
    marks = [n for n in (1, 5, 10, 15, 20, 30, 40, 50, 75, 100) if n < trials]
    return marks + [trials]


def report(curves: dict[str, list[list[float]]], trials: int) -> list[str]:
    """The table: per sampler, mean and std over seeds of the best val accuracy after n trials."""
    marks = checkpoints(trials)
    lines = [f"{'sampler':<8} {'seeds':>5} " + " ".join(f"{f'best@{n}':>15}" for n in marks)]
    for sampler, per_seed in curves.items():
        cells = []
        for n in marks:
            at = [100 * c[n - 1] for c in per_seed]
            std = statistics.stdev(at) if len(at) > 1 else 0.0
            cells.append(f"{statistics.fmean(at):>8.2f} ± {std:<4.2f}")
        lines.append(f"{sampler:<8} {len(per_seed):>5} " + " ".join(cells))
    tpe, rnd = (([c[-1] for c in curves[s]]) for s in SAMPLERS)
    wins = sum(t > r for t, r in zip(tpe, rnd))
    ties = sum(t == r for t, r in zip(tpe, rnd))
    lines.append(f"final best: tpe higher on {wins}, equal on {ties}, random higher on {len(tpe) - wins - ties} seeds")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="trials per study (the budget)")
    parser.add_argument("--seeds", type=int, default=4, help="studies per sampler (seeds 0..N-1)")
    parser.add_argument("--epochs", type=int, default=3, help="train.max_epochs of each trial")
    parser.add_argument("--out", type=Path, default=None, help="keep the study folders here (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="6 trials, 1 seed, 1 epoch (for the test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.seeds, args.epochs = 6, 1, 1
    for name in ("trials", "seeds", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, list[list[float]]]:
    args = parse_args(argv)
    # one thread: each trial is a tiny MLP and the machine is shared; more threads only add contention here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    work = args.out or Path(tempfile.mkdtemp(prefix="hpo_digits-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{CONFIG.relative_to(ROOT)}: {args.trials} trials per study, {args.epochs} epochs per trial, ", end="")
    print(f"seeds 0..{args.seeds - 1}")
    print("space: " + "; ".join(line.split(":")[0] for line in SPACE.splitlines()))
    start = time.perf_counter()
    curves: dict[str, list[list[float]]] = {s: [] for s in SAMPLERS}
    try:
        for seed in range(args.seeds):
            for sampler in SAMPLERS:
                t0 = time.perf_counter()
                values = run_study(sampler, seed, args.trials, args.epochs, work)
                curves[sampler].append(best_so_far(values))
                print(f"{sampler:<6} seed {seed}: best val/accuracy {100 * max(values):.2f}% "
                      f"(trial {values.index(max(values))}) in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    finally:
        torch.set_num_threads(threads)  # a caller (a test) keeps its own setting
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\nbest val/accuracy (%) after n trials, mean ± std over seeds:")
    print("\n".join(report(curves, args.trials)))
    print(f"\n{2 * args.seeds} studies, {2 * args.seeds * args.trials} trials in {time.perf_counter() - start:.0f} s")
    return curves


if __name__ == "__main__":
    main()
