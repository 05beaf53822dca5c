"""``deepseek tune CONFIG --space SPACE.yaml --trials N [options] [key=value ...]``: hyper-parameter search.

Each trial trains CONFIG (with the overrides and the trial's sampled values) in its own run directory
``STUDY_DIR/trials/NNNN``; the study continues when started again with the same ``--study``. At the end:
trials.csv and a table, best.yaml (ready for ``deepseek train``), offline HTML plots and study.json.
Under ``deepseek launch --nproc N tune ARGS`` (torchrun) each trial trains with DDP on all ranks; rank 0
samples it and the other ranks follow.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepseek.cli.errors import UsageError

SAMPLERS = ("tpe", "gp", "cmaes", "random", "auto")  # the same as deepseek.search.tune's, imported late there
PRUNERS = ("median", "hyperband", "none")


def add_parser(sub: Any) -> None:
    """Register ``tune`` on the ``deepseek`` command's subparsers."""
    p = sub.add_parser("tune", help="hyper-parameter search over a config (Optuna): trials as real runs, "
                       "resumable studies, parallel workers", description=__doc__.split("\n\n")[1])  # fmt: skip
    p.add_argument("items", nargs="*", metavar="CONFIG [key.path=value ...]",
                   help="the run config (YAML), then dotted overrides applied to every trial")  # fmt: skip
    p.add_argument("--space", required=True, help="the search space: a YAML mapping of config keys to "
                   "{type: float|int|categorical, ...} (see docs/search.md)")  # fmt: skip
    p.add_argument("--trials", required=True, help="trials to complete or prune, over all workers and restarts")
    p.add_argument("--study", help="the study's name (default: the config file's name); the same name continues it")
    p.add_argument("--study-dir", help="the study folder (default: studies/<study name>)")
    p.add_argument("--storage", help="a database URL shared by workers on several machines (sqlite:///PATH, "
                   "postgresql://USER:PASSWORD@HOST/DB, mysql://...; default: STUDY_DIR/journal.log)")  # fmt: skip
    p.add_argument("--sampler", default="auto", help=f"{' | '.join(SAMPLERS)} (default auto: GP for a small "
                   "unconditional numeric space with one worker, else TPE)")  # fmt: skip
    p.add_argument("--pruner", default="median", help=f"{' | '.join(PRUNERS)} (default median)")
    p.add_argument("--workers", default="1", help="local worker processes sharing the study (default 1)")
    p.add_argument("--metric", help="validation metric to optimise (default: the config's checkpoint.monitor)")
    p.add_argument("--mode", help="max | min (default: the config's checkpoint.mode)")
    p.add_argument("--seed", help="the sampler's seed (default: none, not reproducible)")
    p.add_argument("--retry-failed", default="0", help="run a trial whose worker died again, up to N times "
                   "(default 0: it stays failed)")  # fmt: skip
    p.set_defaults(fn=cmd_tune)


def _int(option: str, text: str | None, low: int) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: not an integer; expected an integer >= {low}") from None
    if value < low:
        raise UsageError(f"{option} {value}: must be an integer >= {low}")
    return value


def _choice(option: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise UsageError(f"{option} {value!r}: not allowed; allowed: {', '.join(allowed)}")


def cmd_tune(args: argparse.Namespace) -> int:
    from deepseek.search.storage import open_storage
    from deepseek.search.tune import tune

    items = list(args.items)
    if not items or "=" in items[0]:
        raise UsageError("deepseek tune needs the config first: deepseek tune CONFIG --space SPACE.yaml --trials N "
                         "[key=value ...]")  # fmt: skip
    config, overrides = items[0], items[1:]
    if bad := [o for o in overrides if "=" not in o]:
        raise UsageError(f"{bad[0]!r}: after the config only key.path=value overrides are allowed")
    trials = _int("--trials", args.trials, 1)
    workers = _int("--workers", args.workers, 1)
    retry = _int("--retry-failed", args.retry_failed, 0)
    seed = _int("--seed", args.seed, 0)
    _choice("--sampler", args.sampler, SAMPLERS)
    _choice("--pruner", args.pruner, PRUNERS)
    _choice("--mode", args.mode, ("max", "min"))
    if not Path(args.space).is_file():
        raise UsageError(f"--space '{args.space}': no such file")
    name = args.study or Path(config).stem
    study_dir = Path(args.study_dir) if args.study_dir else Path("studies") / name
    try:
        open_storage(args.storage, study_dir)  # a bad URL or an unreachable database: one line, before any trial
    except ValueError as exc:
        raise UsageError(f"--storage: {exc}") from None
    if workers != 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"--workers {workers} under deepseek launch: each trial already trains on all ranks; "
                         "drop --workers, or run without launch")  # fmt: skip
    assert trials is not None and workers is not None and retry is not None  # options with defaults / required
    study = tune(config, args.space, trials, study_name=name, study_dir=study_dir, storage=args.storage,
                 sampler=args.sampler, pruner=args.pruner, workers=workers, metric=args.metric, mode=args.mode,
                 seed=seed, retry_failed=retry, overrides=overrides)  # fmt: skip
    if study is not None and not any(t.value is not None for t in study.trials):
        print("error: no trial completed; see the failed trials' errors in trials.csv's run directories and above",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0
