"""The CLI's run-directory checks: a usable ``--run-dir``, which run ``--resume auto`` continues, and
what a resumed run's config may change.

A run directory keeps the config it was started with in ``config.yaml``. Resuming with a config
that differs is refused when the difference changes what the checkpoints mean (the model, the data,
the seed, the batch size, ...: see :data:`RESUMABLE`); allowed differences (more steps, a new
learning rate, logging, checkpoint cadence, ...) are listed in a warning and saved as the next
``config.v2.yaml``, ``config.v3.yaml``, ... so the run's history stays readable.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from deepseek.cli.errors import UsageError

RUN_CONFIG = "config.yaml"
_VERSION = re.compile(r"^config\.v(\d+)\.yaml$")

# Flattened keys (dotted; lists are single values) a resumed run may change: none of them changes the
# weights' shapes, the data order or what a saved optimizer/scheduler state means.
RESUMABLE = (
    "train.max_epochs", "train.max_steps", "train.device", "train.val_every_steps", "train.val_every_epochs",
    "train.early_stopping", "train.early_stopping.*", "train.grad_clip_norm", "train.metrics", "train.compile",
    "train.gradient_checkpointing", "train.on_nonfinite",
    "optim.*", "scheduler.*",
    "checkpoint.every_steps", "checkpoint.every_minutes", "checkpoint.keep_last", "checkpoint.save_best",
    "checkpoint.sharded", "checkpoint.async_save", "parallel.*",  # checkpoints resume at another layout
    "logging.*", "callbacks", "data.num_workers", "data.val_batch_size",
)  # fmt: skip
# ...except these, which pick another optimizer or schedule whose saved state would not fit
FIXED = ("optim.name", "scheduler.name")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [..]}`` -> ``{"a.b": 1, "c": [..]}`` (an empty mapping stays one value)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def resumable(key: str) -> bool:
    return any(fnmatchcase(key, p) for p in RESUMABLE) and not any(fnmatchcase(key, p) for p in FIXED)


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, new value)}`` for every flattened key whose value differs (absent: None)."""
    a, b = flatten(saved), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def latest_config(run_dir: Path) -> Path | None:
    """The run's newest config version: the highest ``config.vN.yaml``, else ``config.yaml`` (None: neither)."""
    versions = [(int(m.group(1)), p) for p in run_dir.glob("config.v*.yaml") if (m := _VERSION.match(p.name))]
    if versions:
        return max(versions)[1]
    path = run_dir / RUN_CONFIG
    return path if path.is_file() else None


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the run's saved config '{path}': {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"the run's saved config '{path}' is not a mapping")
    return data


def prepare_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents) or raise a one-line :class:`UsageError` saying why it cannot be one;
    a run directory (or checkpoint) in a newer format than this release reads raises a FormatVersionError,
    before anything (a config.vN.yaml included) is written into it."""
    from deepseek.runs import check_run_format

    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir '{run_dir}' is a file, not a directory; give a directory (new or a run's)")
    if run_dir.is_dir():
        check_run_format(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"  # one per process: ranks run this at once
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--run-dir '{run_dir}' cannot be used as a run directory: {exc.strerror or exc}") from None


@contextlib.contextmanager
def removed_if_unused_on_error(run_dir: Path, *, main: bool) -> Iterator[None]:
    """Run a block that may create ``run_dir``; if it created it and fails while the directory holds
    nothing but the run lock, remove it again (on the ``main`` process only: a refused or broken
    command leaves no empty ``runs/<time>-<model>/`` behind)."""
    from deepseek.runs import FORMAT_FILE
    from deepseek.train.run_lock import LOCK_FILE

    created = not run_dir.exists()
    try:
        yield
    except BaseException:
        # the Trainer marks a directory it claims with format.json, which alone is no run either
        if created and main and run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE, FORMAT_FILE}:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            (run_dir / FORMAT_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise


def pick_latest_run(runs: Path, model: dict[str, Any]) -> Path:
    """For ``--resume auto`` without ``--run-dir``: the newest run under ``runs`` that has checkpoints,
    only if it trained this ``model`` (its saved config's ``model`` section); else a UsageError."""
    found = [p.parent for p in runs.glob("*/checkpoints") if p.is_dir()]
    if not found:
        raise UsageError(f"--resume auto without --run-dir found no run under {runs}/ with checkpoints")
    latest = max(found, key=lambda p: (p / "checkpoints").stat().st_mtime)
    saved = latest_config(latest)
    if saved is None:
        raise UsageError(f"--resume auto: the latest run, '{latest}', has no {RUN_CONFIG}; pass --run-dir RUN to "
                         "name the run to continue")  # fmt: skip
    diff = config_changes({"model": read_config(saved).get("model")}, {"model": model})
    if diff:
        shown = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(diff.items())[:3])
        raise UsageError(
            f"--resume auto: the latest run, '{latest}', trained another model ({shown}); pass --run-dir RUN "
            "to name the run to continue"
        )
    return latest


def check_resume_config(sources: list[Path], new: dict[str, Any]) -> tuple[Path | None, dict[str, tuple[Any, Any]]]:
    """Compare ``new`` (a resolved config) with the saved config of the run being resumed: the first of
    ``sources`` (run directories) that has one. Refuses keys outside :data:`RESUMABLE` with a
    UsageError listing them; returns (the saved config compared with, the allowed changes)."""
    saved_path = next((p for d in sources if (p := latest_config(d)) is not None), None)
    if saved_path is None:
        return None, {}
    changes = config_changes(_with_todays_defaults(saved_path), new)
    if refused := [k for k in changes if not resumable(k)]:
        raise UsageError(
            f"--resume: the config differs from the run's ({saved_path}) in {', '.join(refused)}, which a resumed "
            "run cannot change; undo those changes, or start a new run (another --run-dir, or --overwrite)"
        )
    return saved_path, changes


def _with_todays_defaults(saved_path: Path) -> dict[str, Any]:
    """The saved config as this release resolves it: keys added since the run was written (``data.streaming``,
    say) get their defaults, so they are no change; the file as it is when this release cannot load it."""
    import yaml

    from deepseek.config import ConfigError, load_config

    saved = read_config(saved_path)
    try:
        resolved = load_config(saved_path).to_dict()
    except (ConfigError, ValueError, TypeError):
        return saved
    return yaml.safe_load(yaml.safe_dump(resolved, sort_keys=False))  # as config.yaml holds it (a YAML round trip)


def resume_sources(run_dir: Path, resume: str) -> list[Path]:
    """Where the resumed run's saved config may be: ``run_dir``, then the run a ``--resume PATH`` names
    (a checkpoint, a checkpoints directory or a run directory)."""
    if resume == "auto":
        return [run_dir]
    p = Path(resume)
    return [run_dir, p, p.parent, p.parent.parent]


def record_config_version(run_dir: Path, new: dict[str, Any]) -> Path:
    """Save ``new`` as the run's next ``config.vN.yaml`` (N >= 2); config.yaml is never rewritten."""
    from deepseek.train.checkpoint import write_text_atomic

    taken = [int(m.group(1)) for p in run_dir.glob("config.v*.yaml") if (m := _VERSION.match(p.name))]
    path = run_dir / f"config.v{max(taken, default=1) + 1}.yaml"
    write_text_atomic(path, yaml.safe_dump(new, sort_keys=False))
    return path


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changes.items())
