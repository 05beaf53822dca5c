"""``deepseek profile CONFIG [key=value ...] [--output-dir DIR] [--steps N] [--start-step S]``.

Runs the config's real model, data, loss, optimizer and precision for ``start_step + steps`` optimizer steps with
``train.profile`` set (a :class:`deepseek.profiler.ProfilerCallback`), in a throwaway run directory (a temporary
directory, removed afterwards), then prints the profiler's table. Trace, flame graphs and summary.json go to
``DIR``. Validation and periodic checkpoints are off (they are not part of a training step).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from deepseek.cli.errors import UsageError


def add_parser(sub: Any) -> None:
    p = sub.add_parser("profile", help="profile a window of a config's real training run (trace, flame graphs, "
                       "summary.json, table)", description=__doc__.split("\n\n")[1])  # fmt: skip
    p.add_argument("config", help="a YAML config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--output-dir", default="profile_results", help="where the files go (default ./profile_results)")
    p.add_argument("--steps", type=int, help="profiled optimizer steps (default: train.profile.steps or 5)")
    p.add_argument("--start-step", type=int, help="optimizer steps before the window (default: "
                   "train.profile.start_step or 10)")  # fmt: skip
    p.add_argument("--metrics", default="", help="comma list of extra metrics (python -m deepseek.profiler "
                   "--metrics help)")  # fmt: skip
    p.set_defaults(fn=cmd_profile)


def cmd_profile(args: argparse.Namespace) -> int:
    from deepseek.train.isolation import isolated_run

    with isolated_run():  # seeds, flags and sys.path of the run end with it
        return _profile(args)


def _profile(args: argparse.Namespace) -> int:
    from deepseek.config import load_config
    from deepseek.config.observe import ProfileSection
    from deepseek.profiler.metrics import parse_metrics
    from deepseek.train.build import build_run

    cfg = load_config(args.config, args.overrides)
    base = cfg.train.profile or ProfileSection()
    steps = base.steps if args.steps is None else args.steps
    start = base.start_step if args.start_step is None else args.start_step
    if steps < 1:
        raise UsageError(f"--steps {steps}: must be 1 or more")
    if start < 0:
        raise UsageError(f"--start-step {start}: must be 0 or more")
    try:
        metrics = parse_metrics(args.metrics) if args.metrics else list(base.metrics)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.output_dir)
    cfg.train.profile = ProfileSection(start_step=start, steps=steps, warmup=min(base.warmup, start),
                                       output_dir=str(out), metrics=metrics)  # fmt: skip
    cfg.train.max_steps, cfg.train.max_epochs = start + steps, None
    cfg.train.val_every_steps, cfg.train.val_every_epochs = None, None
    cfg.checkpoint.every_steps, cfg.checkpoint.every_minutes = None, None  # no checkpoint inside the window
    with tempfile.TemporaryDirectory(prefix="deepseek-profile-run-") as run_dir:  # the throwaway run
        run = build_run(cfg, run_dir, progress="off")
        profiler = next(cb for cb in run.trainer.callbacks.callbacks if type(cb).__name__ == "ProfilerCallback")
        profiler.model_name = cfg.model.name
        run.trainer.fit(run.train_loader, None)
    if profiler.summary is None:  # the callback said why (a failure to read the profile never stops the run)
        raise UsageError(f"no profile was written after {run.trainer.global_step} steps (see the profiler's message "
                         "above)")  # fmt: skip
    print(f"wrote {out / 'summary.json'}")
    return 0
