"""The rules among ``parallel``'s tp / pp / ep settings that need no model and no world size (the schema's
``ParallelSection`` raises the first one broken; the model's and the world's are checked by
:mod:`deepseek.train.plan`)."""

from __future__ import annotations

from typing import Any


def model_parallel_problem(par: Any) -> str | None:
    """The first contradiction among ``par``'s tp / pp / ep settings (``par``: a ``ParallelSection``, not
    imported: the schema imports this module), as one line (None: they fit together).
    Micro-batch rules are torch 2.13's: ``Schedule1F1B`` needs ``n_microbatches >= stages``, GPipe takes any
    number, ``ScheduleInterleaved1F1B`` a multiple of its rounds ``max(1, n_microbatches // pp)``."""
    for key in ("tp", "pp"):
        if getattr(par, key) > 1 and par.zero_stage < 2:
            return (f"{key}: {getattr(par, key)} needs zero_stage 2 or 3 (FSDP2 on the data dimension) "
                    f"(got zero_stage: {par.zero_stage})")  # fmt: skip
    for key in ("sequence_parallel", "loss_parallel"):
        if getattr(par, key) and par.tp == 1:
            return f"{key}: true needs tp > 1 (got tp: 1); allowed with tp 1: false"
    if par.pp == 1 and par.pp_microbatches is not None:
        return f"pp_microbatches: {par.pp_microbatches} needs pp > 1 (got pp: 1); allowed with pp 1: null"
    interleaved, stages = par.pp_schedule == "interleaved_1f1b", par.pp_stages_per_rank
    if interleaved and stages < 2:
        return f"pp_schedule: interleaved_1f1b needs pp_stages_per_rank >= 2 (got {stages})"
    if not interleaved and stages != 1:
        return (f"pp_stages_per_rank: {stages} needs pp_schedule interleaved_1f1b (got {par.pp_schedule}); "
                f"allowed with {par.pp_schedule}: 1")  # fmt: skip
    m, shown = par.pp_microbatches or par.pp, f"with pp_schedule {par.pp_schedule} and pp {par.pp}"
    if par.pp_schedule != "gpipe" and m < par.pp:  # what the pipeline strategy accepts (train/pipeline.py)
        return f"pp_microbatches: {m} {shown}; allowed: at least pp ({par.pp}), or gpipe"
    if interleaved and m % max(1, m // par.pp):
        return (f"pp_microbatches: {m} {shown}; allowed: a multiple of its rounds max(1, {m} // {par.pp}) = "
                f"{max(1, m // par.pp)}")  # fmt: skip
    if par.pp_split is not None and len(par.pp_split) != par.pp * stages:
        return (f"pp_split: {par.pp_split} has {len(par.pp_split)} stages; allowed: pp x pp_stages_per_rank = "
                f"{par.pp * stages} entries")  # fmt: skip
    if par.comm is not None and (par.tp != 1 or par.pp != 1 or par.ep != 1 or par.zero_stage == 1):
        return (f"comm: a topology or compression applies to the data-parallel gradient reduction: it needs tp 1, "
                f"pp 1, ep 1 and zero_stage 0 (DDP) or 2/3 (FSDP2) (got zero_stage {par.zero_stage}, tp {par.tp}, "
                f"pp {par.pp}, ep {par.ep})")  # fmt: skip
    if par.comm is not None and par.zero_stage >= 2 and (par.comm.topology == "tree" or par.comm.compression != "none"
                                                          or par.dp_replicate != 1):  # fmt: skip
        return (f"comm: topology {par.comm.topology}, compression {par.comm.compression} with zero_stage "
                f"{par.zero_stage}, dp_replicate {par.dp_replicate}; allowed under FSDP2: topology ring or hybrid (a "
                "hierarchical reduce-scatter), compression none, dp_replicate 1 (HSDP is already hierarchical: "
                "dp_replicate nodes x dp_shard ranks per node)")
    if par.ep > 1:
        if par.tp != 1 or par.pp != 1:
            return f"ep: {par.ep} needs tp 1 and pp 1 (got tp: {par.tp}, pp: {par.pp}); expert parallel alone for now"
        if par.zero_stage != 0:
            return (f"ep: {par.ep} needs zero_stage 0 (got {par.zero_stage}); the experts share the data "
                    "dimension, which is not sharded further for now")  # fmt: skip
        dp = par.dp_replicate * par.dp_shard
        if par.dp_shard != -1 and dp % par.ep:
            return (f"ep: {par.ep} does not divide the data-parallel degree dp_replicate x dp_shard = "
                    f"{par.dp_replicate} x {par.dp_shard} = {dp}; allowed: a divisor of {dp}")  # fmt: skip
    return None
