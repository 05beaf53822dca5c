"""Process-group set-up from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

Ranks started by ``mpirun`` (Open MPI), a PMI launcher (MPICH, Intel MPI) or ``srun`` (SLURM) get the
same three values from their launcher's variables (:func:`adopt_launcher_env`); the rendezvous address
then comes from ``MASTER_ADDR`` / ``MASTER_PORT``, which the user exports (``mpirun -x``).
Backend: ``DS_DIST_BACKEND`` if set, else nccl on CUDA and gloo on CPU. Each rank works on
``cuda:<LOCAL_RANK>``; collectives run on the group's device (NCCL has no CPU collectives).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from deepseek.errors import ConfigError

CPU_BACKENDS = ("gloo", "mpi")  # backends that reduce CPU tensors

# The default group init_distributed created from torchrun's environment (None: none, or the
# user's own), and how many it has created (each gets rendezvous keys of its own).
_created_group: Any = None
_groups_created = 0


@dataclass(frozen=True)
class DistInfo:
    """This rank's place in the world; ``comm_device``: where the group's collectives run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    comm_device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Have the kernel SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Ranks that outlived a killed ``torchrun`` agent would go on training and writing checkpoints as
    orphans. ``parent_pid`` is the parent this process was started by (default: the current one); if
    it is already gone, which the signal alone would miss, this process kills itself at once.
    Returns False where the platform has no such signal (not Linux).
    """
    expected = os.getppid() if parent_pid is None else parent_pid
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != expected:  # the parent died before the signal was armed: we are already an orphan
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def die_with_torchrun_agent() -> None:
    """:func:`die_with_parent` in a rank that torchrun started (``TORCHELASTIC_RUN_ID`` set); else nothing.

    Only under torchrun: its agent starts each rank as a direct child, from its main thread (the
    signal fires when the creating thread ends), and restarts ranks itself; elsewhere a parent's
    death need not end the process."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        die_with_parent()


# (launcher, its RANK, WORLD_SIZE and LOCAL_RANK variables, a variable only its ranks have), in the order
# they are tried after torchrun's. SLURM sets SLURM_PROCID and SLURM_NTASKS in the batch script too, whose
# one process is no rank of an N-task world: only a job step that srun started (SLURM_STEP_ID) counts.
LAUNCHER_RANK_VARIABLES = (
    ("Open MPI", ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"), None),
    ("PMI", ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"), None),
    ("SLURM", ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"), "SLURM_STEP_ID"),
)


def rank_launcher(environ: Mapping[str, str]) -> tuple[str, tuple[str, str, str]] | None:
    """The MPI or SLURM launcher that started this process as a rank, with its (rank, size, local rank)
    variable names; None under torchrun (``TORCHELASTIC_RUN_ID``) or in a plain process."""
    if "TORCHELASTIC_RUN_ID" in environ:
        return None
    for name, variables, marker in LAUNCHER_RANK_VARIABLES:
        if variables[0] in environ and variables[1] in environ and (marker is None or marker in environ):
            return name, variables
    return None


def launcher_rank_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as torchrun would set them, from ``environ``.

    torchrun's own variables win; without them, the first launcher of :data:`LAUNCHER_RANK_VARIABLES`
    whose rank and size (and marker) are set supplies them (a missing local rank reads as 0). Empty for
    a plain process. The MPI and SLURM launchers export no rendezvous address: that stays with
    ``MASTER_ADDR`` / ``MASTER_PORT``.
    """
    found = rank_launcher(environ)
    if found is None or ("RANK" in environ and "WORLD_SIZE" in environ):
        return {}
    rank, size, local = found[1]
    return {"RANK": environ[rank], "WORLD_SIZE": environ[size], "LOCAL_RANK": environ.get(local, "0")}


def adopt_launcher_env() -> None:
    """Export :func:`launcher_rank_env`'s values into ``os.environ`` (torchrun's variables stay as set).

    Call before anything reads ``RANK`` (which rank is the main one) or ``LOCAL_RANK`` (the GPU); a
    rank under ``mpirun -np 2`` would otherwise take itself for a plain process of a world of one.
    """
    os.environ.update(launcher_rank_env(os.environ))


def local_rank_from_env() -> int:
    """torchrun's ``LOCAL_RANK``, or an MPI / SLURM launcher's local rank (0 in a plain process)."""
    return int(os.environ.get("LOCAL_RANK") or launcher_rank_env(os.environ).get("LOCAL_RANK", "0"))


def resolve_device(device: str | torch.device, local_rank: int | None = None) -> torch.device:
    """``auto`` -> this process's GPU when CUDA is present, else ``cpu``; any CUDA spelling -> this process's GPU.

    Under torchrun (``WORLD_SIZE`` > 1) this process's GPU is ``cuda:<LOCAL_RANK>``, whatever index a
    config shared by all ranks names (``cuda:0`` would put every rank on one GPU, which NCCL refuses),
    or ``cuda:0`` when each rank sees a single GPU (``CUDA_VISIBLE_DEVICES``, SLURM ``--gpus-per-task=1``).
    A single process keeps an explicit index and fills a missing one with ``local_rank`` (default
    ``LOCAL_RANK``, 0 outside torchrun).
    """
    if local_rank is None:
        local_rank = local_rank_from_env()
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev
    if int(os.environ.get("WORLD_SIZE") or launcher_rank_env(os.environ).get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", local_rank if torch.cuda.device_count() > 1 else 0)
    return dev if dev.index is not None else torch.device("cuda", local_rank)


def comm_device(backend: str, device: torch.device) -> torch.device:
    """Where a ``backend`` group's collectives run: the CPU for gloo/mpi (or a group with a ``cpu:``
    backend), else this rank's accelerator: ``device``, or the current one when ``device`` is the CPU."""
    if backend in CPU_BACKENDS or "cpu:" in backend:
        return torch.device("cpu")
    if device.type != "cpu":
        return device
    acc = torch.accelerator.current_accelerator()  # e.g. the user's NCCL group and a CPU-side Trainer
    return torch.device(acc.type, torch.accelerator.current_device_index()) if acc is not None else device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes; a plain process gets a world of one.

    ``device`` is this rank's device (``cuda:<LOCAL_RANK>`` from :func:`resolve_device`); on CUDA it
    becomes the current device and the group's ``device_id``. An existing group (the user's, or
    one made earlier) is joined as it is.
    """
    global _created_group, _groups_created
    die_with_torchrun_agent()  # also for torchrun scripts that use the Trainer without the CLI
    adopt_launcher_env()  # ranks from mpirun / srun: RANK, WORLD_SIZE, LOCAL_RANK as torchrun names them
    local_rank = local_rank_from_env()
    if dist.is_available() and dist.is_initialized():
        backend = str(dist.get_backend())
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), comm_device(backend, device))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing and rank_launcher(os.environ):  # torchrun sets both; mpirun and srun leave them to the user
        raise ConfigError([f"{' and '.join(missing)} not set: a world of {world} ranks needs the rendezvous "
                           "address of rank 0 (e.g. mpirun -x MASTER_ADDR=node0 -x MASTER_PORT=29500)"])  # fmt: skip
    backend = os.environ.get("DS_DIST_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
    bind: dict[str, Any] = {}
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels and NCCL calls without an explicit device land here
        bind["device_id"] = device
    # torch names every new default group "0", so a group made after another was destroyed (a second
    # fit()) would find the first one's stale addresses under the same keys in torchrun's store, and
    # could hang; keys of each group's own avoid that. The ranks agree on the count: they run the same code.
    # An elastic restart (`deepseek launch --max-restarts`) reuses the agent's store too: each attempt's
    # ranks keep to keys of their own attempt, never the dead attempt's.
    store, rank, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"deepseek-attempt-{attempt}-group-{_groups_created}", store)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, **bind)
    _created_group, _groups_created = dist.group.WORLD, _groups_created + 1
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), comm_device(backend, device))


def init_one_rank_group(device: torch.device) -> None:
    """A group of this process alone, on a store of its own (a port the OS picks), for a strategy that needs
    a group (``fsdp``) in a plain process without a launcher; it is this module's own, so
    :func:`leaving_own_process_group` removes it like one :func:`init_distributed` created."""
    global _created_group, _groups_created
    store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False)
    bind = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1, **bind)
    _created_group, _groups_created = dist.group.WORLD, _groups_created + 1


def owns_process_group() -> bool:
    """True while the default group is one :func:`init_distributed` created (not the user's own)."""
    return _created_group is not None and dist.is_initialized() and dist.group.WORLD is _created_group


def shutdown_distributed(*, wait: bool = True) -> None:
    """Leave the process group, after a barrier when ``wait`` (the normal end of a run).

    Without this a rank that finishes first exits with gloo's threads still running and can die
    with SIGABRT ("terminate called without an active exception") while rank 0 is still writing.
    On an error path pass ``wait=False``: a barrier would hang waiting for a rank that is gone.
    """
    global _created_group
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()
    _created_group = None


@contextlib.contextmanager
def leaving_own_process_group() -> Iterator[None]:
    """Run a block, then leave the process group if :func:`init_distributed` created it.

    On success all ranks meet at a barrier first; on an error there is none (the failed rank's
    peers may never arrive). A group the user created stays theirs, for them to destroy.
    """
    try:
        yield
    except BaseException:
        if owns_process_group():
            shutdown_distributed(wait=False)
        raise
    if owns_process_group():
        shutdown_distributed()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op in a world of one); returns ``t``.

    The reduction runs on ``info.comm_device`` (NCCL rejects CPU tensors): a tensor elsewhere, e.g.
    a metric's exact float64 sums kept on the CPU, is copied there and its sum copied back.
    """
    if info.enabled:
        on_group = t.to(info.comm_device)
        dist.all_reduce(on_group, op=dist.ReduceOp.SUM)
        if on_group is not t:
            t.copy_(on_group)
    return t
