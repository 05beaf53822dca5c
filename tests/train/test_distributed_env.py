"""Ranks from Open MPI / PMI / SLURM read like torchrun's, and each elastic attempt keeps to its own store keys."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from deepseek.errors import ConfigError
from deepseek.train import distributed
from deepseek.train.distributed import adopt_launcher_env, init_distributed, launcher_rank_env, local_rank_from_env

RANK_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
              "TORCHELASTIC_RUN_ID", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
              "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID",
              "SLURM_STEP_ID")  # fmt: skip


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables from the environment the tests run in (a CI job under SLURM has them); on exit the
    environment is put back whole, since ``adopt_launcher_env`` writes ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` into
    ``os.environ`` itself (monkeypatch restores only the names it set or found)."""
    saved = dict(os.environ)
    for name in RANK_NAMES:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize(
    "launcher_env",
    [
        {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"},
        {"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1"},
        {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"},
    ],
    ids=["openmpi", "pmi", "slurm"],
)
def test_launcher_ranks_read_as_torchrun_names_them(clean_env, launcher_env):
    for name, value in launcher_env.items():
        clean_env.setenv(name, value)
    assert launcher_rank_env(launcher_env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert local_rank_from_env() == 1  # before adopt_launcher_env: the GPU is picked before the group exists
    adopt_launcher_env()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "8", "1")


def test_torchrun_variables_win_and_a_plain_process_has_none(clean_env):
    both = {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert launcher_rank_env(both) == {}  # torchrun under an sbatch allocation: torchrun's numbers stand
    assert launcher_rank_env({}) == {}
    assert launcher_rank_env({"PMI_RANK": "0", "PMI_SIZE": "2"}) == {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    # torchrun started inside an srun step: torchrun's ranks, whatever SLURM says
    assert launcher_rank_env({"TORCHELASTIC_RUN_ID": "x", "SLURM_PROCID": "0", "SLURM_NTASKS": "8",
                              "SLURM_STEP_ID": "0"}) == {}  # fmt: skip
    # an sbatch script's own process (no srun step): SLURM_PROCID=0 of SLURM_NTASKS=8, yet a plain process
    assert launcher_rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}) == {}


@pytest.mark.parametrize("adopted_first", [False, True], ids=["trainer", "cli"])
def test_mpi_ranks_without_a_rendezvous_address_get_a_config_error(clean_env, adopted_first):
    clean_env.setenv("OMPI_COMM_WORLD_RANK", "0")
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "2")
    if adopted_first:  # `deepseek train` exports RANK / WORLD_SIZE before it builds anything
        adopt_launcher_env()
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT not set: a world of 2 ranks"):
        init_distributed(torch.device("cpu"))
    assert not dist.is_initialized()


@pytest.mark.parametrize("attempt", ["0", "3"])
def test_each_elastic_attempt_keeps_to_its_own_store_keys(clean_env, attempt):
    """torchrun's restarted ranks share the agent's store with the dead attempt's keys: the group's keys
    carry TORCHELASTIC_RESTART_COUNT."""
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1",
                        "TORCHELASTIC_RESTART_COUNT": attempt}.items():  # fmt: skip
        clean_env.setenv(name, value)
    base = dist.HashStore()
    seen = {}

    def fake_init(backend, store, rank, world_size, **kwargs):  # no real group: only the store matters here
        store.set("probe", "x")
        seen["rank"] = rank
        raise RuntimeError("stop after the store")

    clean_env.setattr(distributed.dist, "rendezvous", lambda url: iter([(base, 0, 2)]))
    clean_env.setattr(distributed.dist, "init_process_group", fake_init)
    with pytest.raises(RuntimeError, match="stop after the store"):
        init_distributed(torch.device("cpu"))
    assert base.check([f"deepseek-attempt-{attempt}-group-{distributed._groups_created}/probe"])
