"""``deepseek train | eval | config validate | list | launch``.

Bad input (a config error, an unknown name, a missing checkpoint) prints one ``error:`` line per
problem to stderr and exits with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from deepseek.cli import (
    comm_cmd,
    compress_cmd,
    export_cmd,
    launch_cmd,
    nas_cmd,
    plan_cmd,
    profile_cmd,
    serve_cmd,
    shard_cmd,
    tune_cmd,
)
from deepseek.cli import run_dir as run_dirs
from deepseek.cli.dispatch import run_command
from deepseek.cli.errors import UsageError

BUNDLED_CONFIG = "quickstart.yaml"


def default_config() -> str:
    return str(resources.files("deepseek") / "configs" / BUNDLED_CONFIG)


def _config_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The first positional is the config unless it looks like an override (``key=value``)."""
    items = list(args.items)
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return default_config(), items


def _new_run_dir(model_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model_name)
    return Path("runs") / f"{stamp}-{safe}"


def _check_run_dir(args: argparse.Namespace, run_dir: str | Path) -> None:
    """A new run must not mix with an earlier one in the same directory (``--resume auto`` would pick
    up its checkpoints): checked before anything, even config.yaml, is written there."""
    from deepseek.train.checkpoint import earlier_run

    if args.overwrite and args.resume:
        raise UsageError("--overwrite starts the run over and --resume continues it; give one of them")
    if not (args.resume or args.overwrite) and (found := earlier_run(run_dir)):
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise UsageError(
            f"--run-dir '{run_dir}' already holds an earlier run ({shown}); add --resume auto to continue it, "
            "or --overwrite to delete that run's files and start over"
        )


def _resolved(cfg: Any) -> dict[str, Any]:
    """The config as its run directory's config.yaml holds it (a YAML round trip)."""
    import yaml

    return yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _choose_run_dir(args: argparse.Namespace, cfg: Any) -> Path:
    if args.run_dir:
        return Path(args.run_dir)
    if args.resume == "auto":
        return run_dirs.pick_latest_run(Path("runs"), _resolved(cfg)["model"])
    return _new_run_dir(cfg.model.name)


def _prepare(args: argparse.Namespace, cfg: Any, run_dir: Path) -> dict[str, tuple[Any, Any]] | None:
    """Everything checked before a run writes anything: a usable run directory, no earlier run mixed in,
    no second writer (the main process takes the run directory's lock), a resumable config. Returns,
    when resuming a run with a saved config, the allowed config changes."""
    from deepseek.train.run_lock import lock_run_dir

    run_dirs.prepare_run_dir(run_dir)
    if os.environ.get("RANK", "0") == "0":
        lock_run_dir(run_dir)  # held until this process ends (the kernel drops it even on kill -9)
    _check_run_dir(args, run_dir)
    if not args.resume:
        return None
    saved, changes = run_dirs.check_resume_config(run_dirs.resume_sources(run_dir, args.resume), _resolved(cfg))
    return changes if saved is not None and saved.parent.resolve() == run_dir.resolve() else None


def cmd_train(args: argparse.Namespace) -> int:
    from deepseek.train.isolation import isolated_run

    # the run's seeds, deterministic flags, environment, sys.path additions and process group end with it:
    # `main(["train", ...])` called in-process (a search driver, a notebook) finds its own state unchanged
    with isolated_run():
        return _train(args)


def _train(args: argparse.Namespace) -> int:
    from deepseek.config import load_config
    from deepseek.train.build import build_run
    from deepseek.train.distributed import adopt_launcher_env, die_with_torchrun_agent, shutdown_distributed

    die_with_torchrun_agent()  # a killed `deepseek launch` must not leave ranks training as orphans
    adopt_launcher_env()  # ranks from mpirun / srun: RANK (which one is the main rank) before anything reads it
    path, overrides = _config_and_overrides(args)
    cfg = load_config(path, overrides)
    run_dir = _choose_run_dir(args, cfg)
    with run_dirs.removed_if_unused_on_error(run_dir, main=os.environ.get("RANK", "0") == "0"):
        changes = _prepare(args, cfg, run_dir)
        # a resumed run keeps its config.yaml; allowed changes are saved beside it as the next version
        run = build_run(cfg, run_dir, progress=args.progress, save_config=changes is None)
    if changes and os.environ.get("RANK", "0") == "0":
        version = run_dirs.record_config_version(run_dir, _resolved(cfg))
        print(f"warning: resuming with changed settings: {run_dirs.describe_changes(changes)} (saved as "
              f"{version}; config.yaml keeps the original)", file=sys.stderr, flush=True)  # fmt: skip
    if run.trainer.run_dir is not None and os.environ.get("RANK", "0") == "0":
        print(f"run directory: {run_dir}", flush=True)
    try:
        run.trainer.fit(run.train_loader, run.val_loader, resume=args.resume, overwrite=args.overwrite)
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    shutdown_distributed()
    if run.trainer.run_dir is not None and os.environ.get("RANK", "0") == "0":
        _save_input_spec(run)
    return 0


def _save_input_spec(run: Any) -> None:
    """``RUN/input_spec.json`` from one sample, so serving the run never builds its dataset. Best effort:
    a sample the server cannot describe (a graph) only means the run is served through a serve.yaml."""
    from deepseek.data import Pipeline
    from deepseek.data.sample_spec import describe_sample, write_input_spec

    prep = Pipeline(run.config.data.preprocess, seed=0) if run.config.data.preprocess else None
    try:
        # a shard set written from a config records the raw input's spec (its samples hold preprocessed inputs)
        recorded = (run.splits.info or {}).get("input_spec")
        write_input_spec(run.trainer.run_dir, recorded or describe_sample(run.splits, prep))
    except (ValueError, TypeError, IndexError) as exc:
        print(f"note: no input_spec.json for serving ({exc})", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    from deepseek.config import load_config
    from deepseek.runs import find_trained_weights
    from deepseek.train.build import evaluate

    cfg = load_config(args.config, args.overrides)
    if not Path(args.checkpoint).exists():
        raise UsageError(f"--checkpoint '{args.checkpoint}': no such file or directory")
    weights = find_trained_weights(args.checkpoint)
    metrics = evaluate(cfg, weights)
    # which weights were measured: a checkpoint's model.safetensors holds the raw weights, the EMA
    # average lives in its state.pt and in the run's final/ -- say which one this is
    print(f"evaluated {weights.description}", file=sys.stderr if args.json else sys.stdout)  # --json: stdout is JSON
    if args.json:
        print(json.dumps(metrics))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"eval {args.checkpoint}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            table.add_row(k, f"{v:.4f}")
        Console().print(table)
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    import yaml

    from deepseek.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.print:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    else:
        print(f"{args.config}: ok")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from deepseek.registry import REGISTRIES

    kinds = sorted(REGISTRIES) if args.kind == "all" else [args.kind]
    for kind in kinds:
        registry = REGISTRIES[kind]
        print(f"{kind} ({len(registry)}):")
        if not len(registry):
            print("  (none registered yet)")
        rows = sorted(registry.names(), key=lambda n: (registry.info(n).get("modality", ""), n))
        width = max((len(registry.display_name(n)) for n in rows), default=0)
        for name in rows:
            aliases = registry.aliases_of(name)
            alias_text = f" (also: {', '.join(aliases)})" if aliases else ""
            modality = registry.info(name).get("modality")
            tag = f"[{modality}] " if modality else ""
            if kind == "models":
                tag = f"{_count(name):>8}  "
            print(f"  {registry.display_name(name):<{width}}  {tag}{registry.summary(name)}{alias_text}")
    return 0


def _count(model: str) -> str:
    """``25.6M``-style parameter count of a registered model with its template's values."""
    from deepseek.models import parameter_count

    try:
        n = parameter_count(model)
    except Exception:  # a builder that cannot run on the meta device: show no count
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def cmd_launch(args: argparse.Namespace) -> int:

    from deepseek.cli.launch_cmd import check_launch_options, torchrun_command

    check_launch_options(args)
    path, overrides = _config_and_overrides(args)
    from deepseek.config import load_config
    from deepseek.train.run_lock import check_run_dir_unlocked

    cfg = load_config(path, overrides)  # fail fast, before starting N processes
    if not args.run_dir and args.resume == "auto":  # the ranks continue the run picked here
        args.run_dir = str(run_dirs.pick_latest_run(Path("runs"), _resolved(cfg)["model"]))
    run_dir = args.run_dir or str(_new_run_dir(cfg.model.name))
    if args.node_rank == 0:  # node 0 checks the run directory the nodes share; the others only join
        with run_dirs.removed_if_unused_on_error(Path(run_dir), main=True):
            run_dirs.prepare_run_dir(Path(run_dir))
            check_run_dir_unlocked(run_dir)
            _check_run_dir(args, run_dir)
            if args.resume:
                run_dirs.check_resume_config(run_dirs.resume_sources(Path(run_dir), args.resume), _resolved(cfg))
    return launch_cmd.run_agent(torchrun_command(args, path, overrides, run_dir))


def cmd_launch_forwarded(args: argparse.Namespace, name: str, argv: list[str]) -> int:
    """``deepseek launch [OPTIONS] comm|tune ARGS``: ``deepseek comm|tune ARGS`` on every rank."""
    return launch_cmd.run_agent(launch_cmd.forwarded_command(args, name, argv))


def build_parser() -> argparse.ArgumentParser:
    from deepseek.cli.data_cmds import add_data_parser
    from deepseek.registry import REGISTRIES

    parser = argparse.ArgumentParser(prog="deepseek", description="deepseek-framework command line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def train_like(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "items",
            nargs="*",
            metavar="[CONFIG] [key.path=value ...]",
            help=f"a YAML config (default: the bundled {BUNDLED_CONFIG}), then dotted overrides",
        )
        p.add_argument("--run-dir", help="run directory (default: a new runs/<time>-<model>)")
        p.add_argument("--resume", help="'auto' (newest valid checkpoint of the run) or a checkpoint path")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="start over in a --run-dir that holds an earlier run: delete its checkpoints, best.json, "
            "metrics, TensorBoard events, summary and final weights first (nothing else)",
        )
        p.add_argument("--progress", choices=["auto", "bar", "plain", "off"], help="override logging.progress")

    train_like(p := sub.add_parser("train", help="train from a config", description="Train from a YAML config."))
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the config's validation split")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir, run dir, or a .safetensors file")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    v = csub.add_parser("validate", help="check a config (and overrides) without running it")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*", metavar="key.path=value")
    v.add_argument("--print", action="store_true", help="print the resolved config")
    v.set_defaults(fn=cmd_config_validate)

    p = sub.add_parser("list", help="list registered components")
    p.add_argument("kind", choices=sorted(REGISTRIES) + ["all"], help="what to list")
    p.set_defaults(fn=cmd_list)

    add_data_parser(sub)
    shard_cmd.add_parser(sub)  # `deepseek data shard`

    export_cmd.add_parser(sub)
    compress_cmd.add_parser(sub)
    serve_cmd.add_parser(sub)
    plan_cmd.add_parser(sub)
    comm_cmd.add_parser(sub)
    profile_cmd.add_parser(sub)
    tune_cmd.add_parser(sub)
    nas_cmd.add_parser(sub)
    p = sub.add_parser("launch", help="run `deepseek train` (or `deepseek comm ...` / `deepseek tune ...`: `launch "
                       "--nproc N comm bench`) under torchrun: N ranks per node, one node or several")  # fmt: skip
    launch_cmd.add_launch_options(p)
    train_like(p)
    p.set_defaults(fn=cmd_launch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from deepseek.train.isolation import added_to_sys_path

    # import paths in configs may name the user's own modules; scoped to this command, so that main() called
    # in-process leaves sys.path (and sys.modules) as it found them
    with added_to_sys_path(os.getcwd()):
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    if (split := launch_cmd.split_forwarded(sys.argv[1:] if argv is None else argv)) is not None:
        launch_argv, name, rest = split
        args = parser.parse_args(launch_argv)
        args.fn = lambda a: cmd_launch_forwarded(a, name, rest)
        return run_command(args)
    args, extra = parser.parse_known_args(argv)
    # Overrides may follow options too (`eval CFG --checkpoint X optim.lr=1`); argparse stops at them.
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    target = "items" if hasattr(args, "items") else "overrides" if hasattr(args, "overrides") else None
    if unknown or (overrides and target is None):
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}")
    if overrides:
        setattr(args, target, [*getattr(args, target), *overrides])
    return run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
