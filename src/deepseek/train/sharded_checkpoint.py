"""Sharded checkpoints: each rank writes its own shards through ``torch.distributed.checkpoint`` (DCP).

Under a sharding strategy (``fsdp`` ZeRO-2/3) no rank gathers the whole model for a checkpoint: every rank
takes the model's and optimizer's *sharded* state (``get_state_dict``: DTensors keyed by parameter name)
and ``dcp.save`` writes each rank's shards into ``shards/`` of the checkpoint's hidden temporary directory.
After a barrier the main rank writes ``state.pt`` (the rest of the state, the optimizer's excepted) and
``meta.json`` last (every file with its size and SHA-256, and a ``"sharded"`` record of the layout that
wrote it: world size, strategy, ZeRO stage, mesh), fsyncs and renames: still all or nothing. An
asynchronous save (``dcp.async_save``) is started by :func:`start_sharded_save` and sealed by
:func:`finish_sharded_save` once every rank's write completed (the Trainer: at the next save or the end of
``fit()``); a kill before that leaves only the hidden directory, which resuming never picks.

Loading takes this process's own state dict as the template (``get_state_dict`` of the model it resumes):
DCP reads into it whatever slices of the saved tensors it needs, so the checkpoint loads at another world
size (re-sharded), under DDP or on one process (into full tensors), then ``set_state_dict`` applies it.
:func:`deepseek.runs.load_sharded_weights` reads the weights into a whole model in one process (eval, serving).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from deepseek.runs import (
    SHARDS_DIR,
    STATE_FILE,
    CheckpointError,
    CheckpointMismatchError,
    verify,
)
from deepseek.train.checkpoint import CheckpointManager, _raise_if_disk_full
from deepseek.train.distributed import DistInfo

SETTINGS = ("auto", True, False)


def check_sharded_setting(setting: Any) -> bool | str:
    """``setting`` as given when it is one of ``auto``, ``true``, ``false``; ValueError (one line) otherwise."""
    if setting not in SETTINGS or (setting == 1 and setting is not True) or (setting == 0 and setting is not False):
        raise ValueError(f"checkpoint.sharded: {setting!r} is not allowed; use auto, true or false")
    return setting


def uses_sharded_checkpoints(setting: bool | str, strategy: Any, dist: DistInfo) -> bool:
    """Whether checkpoints are written sharded: ``auto`` under a strategy that shards parameters (fsdp
    ZeRO-2/3, pipeline); ``true`` also on a single process (a DCP checkpoint that loads at any layout) and
    under a strategy whose ranks hold parameters of their own (``holds_own_parameters``: expert_parallel's
    experts); never under DDP or ZeRO-1, whose non-main ranks do not take part in a checkpoint (ValueError)."""
    shards_params = getattr(strategy, "zero_stage", None) in (2, 3)
    if setting == "auto":
        return shards_params
    if setting and not (shards_params or getattr(strategy, "holds_own_parameters", False)) and dist.world_size > 1:
        raise ValueError(
            f"checkpoint.sharded: true needs a strategy that shards parameters (fsdp zero_stage 2 or 3, pipeline, "
            f"expert_parallel) on {dist.world_size} ranks, not {type(strategy).__name__}; use auto or false"
        )
    return bool(setting)


def layout(strategy: Any, dist: DistInfo) -> dict[str, Any]:
    """What meta.json's ``"sharded"`` record says about the layout that wrote a checkpoint."""
    mesh = getattr(strategy, "mesh", None)
    return {
        "world_size": dist.world_size,
        "strategy": type(strategy).__name__.lower(),
        "zero_stage": getattr(strategy, "zero_stage", None),
        "mesh": list(mesh.shape) if mesh is not None else None,
    }


def _grouped() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


@contextlib.contextmanager
def _single_process_quietly() -> Iterator[None]:
    """DCP warns on every save and load without a process group that it assumes one process: we mean it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _main_pid() -> int:
    """The main rank's process id on every rank: it names the temporary directory all ranks write into."""
    pid = [os.getpid()]
    if _grouped():
        torch_dist.broadcast_object_list(pid, src=0)
    return int(pid[0])


def rank_rng_states(state: dict[str, Any]) -> list[Any] | None:
    """Every rank's RNG state (``state["rng"]`` of each), gathered on every rank: a collective."""
    if not _grouped() or torch_dist.get_world_size() == 1:
        return None
    states: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(states, state["rng"])
    return states


@dataclass
class PendingSave:
    """A sharded save whose shards are (being) written: what finishing it needs. ``done``: a future whose
    ``result()`` waits for this rank's shards (None: written already, synchronously)."""

    step: int
    tmp: Path
    final: Path
    state: dict[str, Any]
    record: dict[str, Any]
    done: Any = None


def start_sharded_save(
    manager: CheckpointManager,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    record: dict[str, Any],
    dist: DistInfo,
    asynchronous: bool = False,
    async_group: Any = None,
    extra: dict[str, dict[str, torch.Tensor]] | None = None,
) -> PendingSave | None:
    """Write this rank's shards of checkpoint ``step`` (every rank calls this: collectives) into the hidden
    temporary directory; :func:`finish_sharded_save` then seals it. None when ``step`` is saved already.

    ``state``: what ``state.pt`` will hold; ``record``: meta.json's ``"sharded"``. ``asynchronous``: the
    shards are copied to the CPU now and written by a background thread (``dcp.async_save``) while training
    goes on; its collectives use ``async_group`` (a gloo group of its own), never training's group.
    ``extra``: more parts written as shards beside the model's (the EMA average: ``{"ema": {name: tensor}}``)."""
    from torch.distributed.checkpoint import FileSystemWriter, async_save, save
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = manager.directory / f"step-{step:08d}"
    if final.exists():  # the same answer on every rank: they share the run directory
        return None
    tmp = manager.tmp_dir(step, _main_pid())
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / SHARDS_DIR).mkdir(parents=True)
    if _grouped():  # the directory exists before any rank writes into it
        torch_dist.barrier()
    pending = PendingSave(step, tmp, final, state, record)
    try:
        model_state, optim_state = get_state_dict(model, optimizer)  # sharded: DTensors under fsdp
        shards = {"model": model_state, "optimizer": optim_state, **(extra or {})}
        writer = FileSystemWriter(tmp / SHARDS_DIR)  # fsyncs every file it writes (sync_files)
        with _single_process_quietly():
            if asynchronous:
                pending.done = async_save(shards, storage_writer=writer, process_group=async_group,
                                          no_dist=not _grouped())  # fmt: skip
            else:
                save(shards, storage_writer=writer, no_dist=not _grouped())
    except BaseException as exc:  # an error or Ctrl-C: no partial directory stays behind
        _discard(pending, exc, dist)
        raise
    return pending


def finish_sharded_save(manager: CheckpointManager, pending: PendingSave, dist: DistInfo) -> Path | None:
    """Wait for every rank's shards, then (main rank) write state.pt and meta.json last and rename: every
    rank calls this; returns the checkpoint's path on the main rank."""
    try:
        if pending.done is not None:
            pending.done.result()  # raises what the background write raised
        # DCP gathers every rank's write results on the coordinator before it writes .metadata, so the
        # shards are complete here; the barrier keeps the other ranks from running ahead of the rename
        if _grouped():
            torch_dist.barrier()
        if dist.is_main:
            manager.seal(pending.tmp, pending.final, pending.step, pending.state, {"sharded": pending.record})
    except BaseException as exc:
        _discard(pending, exc, dist)
        raise
    return pending.final if dist.is_main else None


def _discard(pending: PendingSave, exc: BaseException, dist: DistInfo) -> None:
    if dist.is_main:
        shutil.rmtree(pending.tmp, ignore_errors=True)
        _raise_if_disk_full(exc, f"checkpoint {pending.final}")


def _verify_once(path: Path) -> None:
    """:func:`verify` on the main rank only (hashing every shard on every rank would read the whole checkpoint
    N times); every rank raises what it raised."""
    failure: list[Any] = [None]
    if not _grouped() or torch_dist.get_rank() == 0:
        try:
            verify(path)
        except CheckpointError as exc:
            failure[0] = exc
    if _grouped():
        torch_dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise failure[0]


def load_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, dict[str, torch.Tensor]] | None = None
) -> dict[str, Any]:
    """Load a sharded checkpoint's model and optimizer state into ``model`` / ``optimizer`` at this
    process's layout (every rank calls it) and return ``state.pt``; CheckpointError when it is damaged,
    CheckpointMismatchError when it does not fit ``model``. ``extra`` parts (the EMA average) are loaded in
    place into their tensors when the checkpoint holds them."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.optim import ZeroRedundancyOptimizer

    _verify_once(path)
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        raise CheckpointMismatchError(
            f"{path} is sharded; fsdp zero_stage 1 cannot load it: resume with zero_stage 2 or 3, ddp or one process"
        )
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # as deepseek.train.checkpoint.load_checkpoint reports it
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{STATE_FILE} does not load ({exc.__class__.__name__}: {first_line})") from None
    model_state, optim_state = get_state_dict(model, optimizer)  # the template DCP fills at this layout
    # Each group's parameter names stay this rank's own: DCP stores one rank's copy of such non-tensor values,
    # and under pipeline parallelism every stage's ranks hold other parameters.
    own_names = [list(group["params"]) for group in optim_state.get("param_groups", [])]
    reader = FileSystemReader(path / SHARDS_DIR)
    saved = {key.split(".", 1)[0] for key in reader.read_metadata().state_dict_metadata}
    parts = {name: part for name, part in (extra or {}).items() if name in saved}
    try:
        with _single_process_quietly():
            load({"model": model_state, "optimizer": optim_state, **parts}, storage_reader=reader,
                 no_dist=not _grouped())  # fmt: skip
    except Exception as exc:  # DCP: keys or shapes this model does not have
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointMismatchError(f"{path} does not fit the model: {first_line}") from None
    for group, names in zip(optim_state.get("param_groups", []), own_names):
        group["params"] = names
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state)
    return state
