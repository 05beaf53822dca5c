"""Read what ``deepseek train`` wrote: a run directory's resolved ``config.yaml`` and trained weights -> model.

The one place that turns a run directory (or a checkpoint, or a weights file) back into a model, used by
``deepseek eval`` and by serving (:mod:`deepseek.serve.repository`). It sits below ``train`` and ``serve``
(docs/architecture.md), so serving never imports the training layer: it builds no dataset, loader,
optimizer or Trainer. The checkpoint *format* (file names, ``meta.json`` verification, loading weights)
lives here too; :mod:`deepseek.train.checkpoint` writes that format and imports these back.

Format versions. Each checkpoint's ``meta.json`` carries ``"format_version"`` and each run directory a
``format.json`` (``{"format_version": N}``, written when training claims the directory: a run resumed by
this release is marked with this release's version, which reads every older one). A missing version is
version 0, the layout before versions existed (tests/fixtures/run_v1), and still reads. A version newer
than :data:`FORMAT_VERSION` raises :class:`FormatVersionError` (one line; the CLI exits 2) wherever the
checkpoint or run is read -- also under ``--resume auto``: such a checkpoint is not damaged, so it is
refused rather than skipped for an older one (resuming behind it would silently drop what a newer
release wrote, then mix two formats in one run). A ``format_version`` that is no non-negative integer is
damage, skipped like a bad SHA-256.

Versions: 0 (none), 1 (``format_version`` written), 2 (a checkpoint may be sharded: ``meta.json``'s
``"sharded"`` record, its model and optimizer state in ``shards/`` instead of ``model.safetensors``). A
release that reads up to 1 would take a sharded checkpoint for a damaged one and skip it; version 2 makes
it refuse the run instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model

from deepseek import models
from deepseek.config import Config
from deepseek.config.trust import load_directory_config

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.pt", "meta.json"
# A sharded checkpoint (meta.json's "sharded" record) holds its model and optimizer state as a
# torch.distributed.checkpoint directory here instead of MODEL_FILE, one file per rank that wrote it.
SHARDS_DIR = "shards"
CONFIG_FILE, FORMAT_FILE = "config.yaml", "format.json"
FORMAT_VERSION = 2  # the newest checkpoint / run directory layout this release writes and reads
FINAL_WEIGHTS = Path("final") / MODEL_FILE
STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, partial or corrupt."""


class CheckpointMismatchError(CheckpointError):
    """A sound checkpoint whose weights do not fit the model (another architecture or size): not damage,
    so resuming stops on it instead of skipping to an older checkpoint."""


class FormatVersionError(CheckpointMismatchError):
    """A checkpoint or run directory written in a newer format than this release reads (not damage either)."""


def _version_of(record: dict[str, Any], where: str) -> int:
    """``record["format_version"]`` (0 when absent); CheckpointError when it is no non-negative integer."""
    version = record.get("format_version", 0)
    if type(version) is not int or version < 0:  # bool is an int subclass; JSON true is no version
        raise CheckpointError(f"{where}: format_version is {version!r}, expected a non-negative integer")
    return version


def _refuse_newer(version: int, what: str) -> None:
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{what} has format version {version}; this deepseek reads up to {FORMAT_VERSION}: upgrade deepseek"
        )


def check_run_format(run_dir: str | Path) -> int:
    """The format version of ``run_dir`` (0: no ``format.json``); :class:`FormatVersionError` when it, or
    any of its checkpoints' ``meta.json``, is newer than this release reads. Reads small JSON files only
    (no hashing): an unreadable checkpoint ``meta.json`` is left to :func:`verify`."""
    run_dir = Path(run_dir)
    path = run_dir / FORMAT_FILE
    version = 0
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} does not read ({exc.__class__.__name__}: {exc})") from None
        if not isinstance(record, dict):
            raise CheckpointError(f'{path} holds {record!r}, expected {{"format_version": int}}')
        version = _version_of(record, str(path))
        _refuse_newer(version, f"run directory {run_dir}")
    for ckpt in checkpoint_dirs(run_dir / "checkpoints"):
        try:
            ckpt_version = _version_of(json.loads((ckpt / META_FILE).read_text()), META_FILE)
        except (OSError, ValueError, AttributeError, CheckpointError):
            continue  # damage, which verify() reports where this checkpoint is read
        _refuse_newer(ckpt_version, f"checkpoint {ckpt}")
    return version


# ------------------------------------------------------------------------------ the checkpoint format
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a safetensors file into ``model``: an unreadable file raises :class:`CheckpointError`, weights
    that do not fit the model :class:`CheckpointMismatchError`."""
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{Path(path).name} does not load ({exc.__class__.__name__}: {exc})") from None
    except RuntimeError as exc:  # load_state_dict: size mismatches, one line each after a heading
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 else lines[0] if lines else ""
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise CheckpointMismatchError(f"{path} does not fit the model: {first}{more}") from None
    if strict and (missing or unexpected):
        raise CheckpointMismatchError(f"{path}: missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")


def verify(path: Path) -> dict[str, Any]:
    """Check ``meta.json`` and the size and SHA-256 of every file it lists (which must include the
    weights and the state); return the metadata."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"no readable {META_FILE} ({exc.__class__.__name__}: {exc})") from None
    # first: a newer format may list other files
    _refuse_newer(_version_of(meta, META_FILE), f"checkpoint {path}")
    if not isinstance(files, dict):
        raise CheckpointError(f"{META_FILE}: 'files' is {files!r}, expected a mapping of file name to size and sha256")
    sharded = meta.get("sharded")
    if sharded is not None and not (isinstance(sharded, dict) and isinstance(sharded.get("world_size"), int)):
        raise CheckpointError(f"{META_FILE}: 'sharded' is {sharded!r}, expected {{world_size: int, ...}}")
    required = (f"{SHARDS_DIR}/.metadata", STATE_FILE) if sharded else (MODEL_FILE, STATE_FILE)
    for name in required:
        expect = files.get(name)
        if not (
            isinstance(expect, dict) and isinstance(expect.get("size"), int) and isinstance(expect.get("sha256"), str)
        ):
            raise CheckpointError(f"{META_FILE}: files[{name!r}] is {expect!r}, expected {{size: int, sha256: str}}")
    for name, expect in files.items():
        if not isinstance(expect, dict):
            raise CheckpointError(f"{META_FILE}: files[{name!r}] is {expect!r}, expected {{size: int, sha256: str}}")
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{name} is missing")
        if f.stat().st_size != expect["size"]:
            raise CheckpointError(f"{name} has {f.stat().st_size} bytes, expected {expect['size']}")
        if sha256_of(f) != expect["sha256"]:
            raise CheckpointError(f"{name} does not match its SHA-256")
    return meta


def checkpoint_dirs(directory: str | Path) -> list[Path]:
    """The ``step-N`` checkpoint directories under ``directory``, oldest first (not yet verified)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_valid_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint under ``directory`` that verifies; corrupt or partial ones are skipped with a warning."""
    for path in reversed(checkpoint_dirs(directory)):
        try:
            verify(path)
            return path
        except FormatVersionError:  # not damage: refused, not skipped for an older checkpoint
            raise
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint {path}: {exc}", stacklevel=2)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself, a run directory or a checkpoints directory (newest valid)."""
    p = Path(path)
    if (p / META_FILE).is_file():
        check_run_format(p.parent.parent)  # the run it belongs to
        verify(p)
        return p
    check_run_format(p.parent if p.name == "checkpoints" else p)
    for candidate in (p / "checkpoints", p):
        latest = latest_valid_checkpoint(candidate)
        if latest is not None:
            return latest
    raise CheckpointError(f"no valid checkpoint at '{path}'")


def is_sharded(checkpoint: str | Path) -> bool:
    """Whether the checkpoint directory's ``meta.json`` marks it sharded (reads that file only, no hashing)."""
    try:
        return bool(json.loads((Path(checkpoint) / META_FILE).read_text()).get("sharded"))
    except (OSError, ValueError, AttributeError):
        return False


def load_sharded_weights(model: nn.Module, checkpoint: str | Path, part: str = "model") -> None:
    """A sharded checkpoint's weights (``part``: ``model``, or ``ema`` for the EMA average) into ``model``, in
    this one process with no process group: DCP reads
    every rank's slices of each tensor straight into the model's own (full) tensors; the optimizer's shards are
    not read. The caller verifies the checkpoint first (DCP reads its ``.metadata`` with pickle; meta.json's
    SHA-256 covers it). :class:`CheckpointMismatchError` when the names or shapes do not fit ``model``."""
    from torch.distributed.checkpoint import FileSystemReader, load

    reader = FileSystemReader(Path(checkpoint) / SHARDS_DIR)
    saved = {k.removeprefix(f"{part}.") for k in reader.read_metadata().state_dict_metadata if k.startswith(f"{part}.")}
    own = model.state_dict()  # tensors that share the model's storage: DCP loads into them in place
    missing, unexpected = sorted(set(own) - saved), sorted(saved - set(own))
    if missing or unexpected:
        raise CheckpointMismatchError(f"{checkpoint}: missing keys {missing}, unexpected keys {unexpected}")
    try:
        with warnings.catch_warnings():  # that it assumes one process: it is told so (no_dist)
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
            load({part: own}, storage_reader=reader, no_dist=True)
    except Exception as exc:  # DCP: a shape that differs
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointMismatchError(f"{checkpoint} does not fit the model: {first}") from None


def _load_checkpoint_weights(model: nn.Module, checkpoint: Path) -> None:
    """A checkpoint's weights into ``model``: its ``model.safetensors``, or its shards."""
    if is_sharded(checkpoint):
        load_sharded_weights(model, checkpoint)
    else:
        load_weights(model, checkpoint / MODEL_FILE)


# ------------------------------------------------------------------------------ trained weights -> model
def build_model(cfg: Config) -> nn.Module:
    """The model a config's ``model:`` section names, built the one way Python builds it
    (:func:`deepseek.models.build`: the model's shipped template, then the config's values)."""
    return models.build(cfg.model.name, **cfg.model.kwargs)


@dataclass(frozen=True)
class TrainedWeights:
    """Where trained weights come from: ``path`` is a weights file or a verified checkpoint directory;
    ``ema`` says whether they are the EMA average (None: a bare file does not say); ``description``
    is one line for the user."""

    path: Path
    ema: bool | None
    description: str


def find_trained_weights(checkpoint: str | Path) -> TrainedWeights:
    """Resolve a ``.safetensors`` file, a directory holding ``model.safetensors`` (a run's ``final/``),
    a checkpoint, a checkpoints directory or a run directory (its newest valid checkpoint)."""
    path = Path(checkpoint)
    if path.is_dir() and (path / MODEL_FILE).is_file() and not (path / STATE_FILE).is_file():
        path = path / MODEL_FILE  # final/: weights alone, no training state
    if path.is_file():
        if path.parent.name == "final":  # the Trainer writes the EMA average there when EMA is on
            check_run_format(path.parent.parent)
            ema = _run_used_ema(path.parent.parent / CONFIG_FILE)
            note = {True: "EMA weights", False: "raw weights (the run had no EMA)"}.get(
                ema, "the EMA average if the run trained with train.ema_decay"
            )  # fmt: skip
            return TrainedWeights(path, ema, f"{path}: the run's final weights, {note}")
        return TrainedWeights(path, None, f"{path}: the weights in this file")
    ckpt = resolve_checkpoint(path)
    # mmap: only the keys are read here, not the optimizer state's tensors
    has_ema = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True, mmap=True).get("ema") is not None
    kind = "its EMA weights (from state.pt)" if has_ema else "its raw weights (the run had no EMA)"
    return TrainedWeights(ckpt, has_ema, f"checkpoint {ckpt}: {kind}")


def _run_used_ema(run_config: Path) -> bool | None:
    """Whether the run whose resolved ``config.yaml`` this is trained with EMA (None: no readable config)."""
    try:
        return yaml.safe_load(run_config.read_text())["train"].get("ema_decay") is not None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def load_trained_weights(model: nn.Module, checkpoint: str | Path | TrainedWeights) -> nn.Module:
    """Load trained weights into ``model``: a checkpoint's EMA weights when it has them, else its raw ones;
    a weights file, or the ``model.safetensors`` of a run's ``final/`` directory, as stored."""
    found = checkpoint if isinstance(checkpoint, TrainedWeights) else find_trained_weights(checkpoint)
    if found.path.is_file():
        load_weights(model, found.path)
        return model
    _load_checkpoint_weights(model, found.path)
    ema = torch.load(found.path / STATE_FILE, map_location="cpu", weights_only=True).get("ema") if found.ema else None
    if ema is not None and ema.get("in_shards"):  # a sharded checkpoint keeps the average in its shards
        load_sharded_weights(model, found.path, part="ema")
    elif ema is not None:
        model.load_state_dict({k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")})
    return model


def read_run_config(run_dir: str | Path, *, trust_code: bool = False) -> Config:
    """The run's resolved config; without ``trust_code`` it may name registered components only."""
    check_run_format(run_dir)
    return load_directory_config(Path(run_dir) / CONFIG_FILE, trust_code=trust_code)


def read_run(run_dir: str | Path, *, trust_code: bool = False) -> tuple[Config, nn.Module]:
    """The run's config and its model with the final weights loaded (the EMA average when the run used
    EMA), in eval mode. Builds the model only: no dataset, optimizer or Trainer."""
    cfg = read_run_config(run_dir, trust_code=trust_code)
    model = load_trained_weights(build_model(cfg), Path(run_dir) / FINAL_WEIGHTS)
    return cfg, model.eval()
