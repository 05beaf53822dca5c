"""The parallel plan: ``parallel`` degrees checked against the world size, the strategy they select, and
each rank's memory and communication per step, computed from the model built on the meta device.

Numbers are per rank, for the rank that holds the most (rank 0), in bytes:

- parameters, gradients: the model's parameter bytes; from ZeRO-2 on each parameter's FSDP2 shard (dim 0 cut
  in ``ceil(rows / dp_shard)`` rows, padded the way FSDP2 allocates it), for gradients and parameters alike
  (ZeRO-2 keeps shards too; its whole parameters count as gathered).
- optimizer state: state tensors per parameter element, found by stepping the configured optimizer once on a
  small parameter (AdamW: 2, SGD with momentum: 1, plain SGD: 0), sharded from ZeRO-1 on: ZeRO-2/3 per
  parameter like the parameters; ZeRO-1 (``ZeroRedundancyOptimizer``) in whole parameters, the largest
  share of its partition (a large embedding can outweigh ``1/N``).
- activations: the bytes autograd saves for backward in one forward pass of a per-rank batch
  (``data.batch_size`` samples) on the meta device, parameters excluded (see :mod:`deepseek.train.plan_inputs`).
- gathered: whole parameters all-gathered on top of the shards: under ZeRO-2 all of them, from forward to
  backward; under ZeRO-3 at most the root's own (embeddings, head) and the two largest blocks (the one
  running, the next one prefetched).
- collectives (bytes each rank sends per step, ring algorithms, P = parameter bytes, N = ranks in the group):
  DDP all-reduce ``2 (N-1)/N P``; ZeRO-1 (DDP + ``ZeroRedundancyOptimizer``) that all-reduce + a broadcast of
  the stepped parameters ``(N-1)/N P``; ZeRO-2 reduce-scatter ``(N-1)/N P`` + all-gather ``(N-1)/N P``; ZeRO-3
  the same reduce-scatter and one all-gather per forward and one per backward (the backward one only with
  ``reshard_after_forward``) per micro-batch; HSDP adds an all-reduce of the gradient shard across the
  ``dp_replicate`` replicas, ``2 (R-1)/R P/N``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
from pydantic import ValidationError

from deepseek.config import Config, ConfigError
from deepseek.config.schema import ParallelSection
from deepseek.optim import build_optimizer
from deepseek.train.plan_dims import pipeline_blocks, rank_dimensions

GIB = 2**30
# Usable memory per device (nominal; `cpu` is this machine's RAM, shared by every rank launched on it).
DEVICE_MEMORY = {"h100-80gb": 80 * GIB, "a100-80gb": 80 * GIB, "a100-40gb": 40 * GIB, "v100-32gb": 32 * GIB}
HEADROOM = 0.9  # the plan fits when it needs at most 90% of the device: allocator caches, CUDA context, fragments


@dataclass(frozen=True)
class Degrees:
    """The resolved degrees (no -1 left): ``dp_replicate x dp_shard x tp x pp == world``."""

    dp_replicate: int
    dp_shard: int
    tp: int
    pp: int
    zero_stage: int
    reshard_after_forward: bool
    cpu_offload: bool
    ep: int = 1  # expert parallel: a divisor of dp (the experts are split over ep of the data-parallel ranks)

    @property
    def world(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.pp

    @property
    def dp(self) -> int:
        """Data-parallel degree: the global batch is ``data.batch_size x dp x accumulate_grad_batches``."""
        return self.dp_replicate * self.dp_shard


def parallel_of(cfg: Config) -> ParallelSection:
    """``cfg.parallel``, or what ``train.strategy`` amounts to (``fsdp``'s arguments; anything else: ZeRO-0)."""
    if cfg.parallel is not None:
        return cfg.parallel
    strategy = cfg.train.strategy
    if strategy.name.lower() == "fsdp":
        keys = set(ParallelSection.model_fields)
        try:
            return ParallelSection(**{"zero_stage": 3, **{k: v for k, v in strategy.kwargs.items() if k in keys}})
        except ValidationError as exc:  # what fsdp itself would refuse when built
            raise ConfigError([f"train.strategy: fsdp: {e['msg'].removeprefix('Value error, ')}"
                               for e in exc.errors()]) from None  # fmt: skip
    return ParallelSection()


def resolve_degrees(par: ParallelSection, world: int) -> Degrees:
    """The degrees for ``world`` ranks (``dp_shard`` -1 takes the rest); ConfigError when they do not fit it."""
    if world < 1:
        raise ConfigError([f"world size: {world}; allowed: a positive number of ranks"])
    fixed = par.dp_replicate * par.tp * par.pp
    shown = f"dp_replicate x tp x pp = {par.dp_replicate} x {par.tp} x {par.pp}"
    if par.dp_shard == -1:
        if world % fixed:
            raise ConfigError([f"parallel: {shown} = {fixed} does not divide the world size {world}; allowed: "
                               f"degrees whose product divides {world} (dp_shard -1 takes the rest)"])  # fmt: skip
        dp_shard = world // fixed
    else:
        dp_shard = par.dp_shard
        if fixed * dp_shard != world:
            raise ConfigError([f"parallel: {shown} x dp_shard {dp_shard} = {fixed * dp_shard}, but the world has "
                               f"{world} ranks; allowed: degrees that multiply to {world}, or dp_shard: -1 "
                               "for the rest"])  # fmt: skip
    dp = par.dp_replicate * dp_shard
    if dp % par.ep:
        raise ConfigError([f"parallel: ep: {par.ep} does not divide the data-parallel degree {dp} (dp_replicate "
                           f"{par.dp_replicate} x dp_shard {dp_shard}) of {world} ranks; allowed: a divisor of "
                           f"{dp}"])  # fmt: skip
    reshard = par.zero_stage == 3 if par.reshard_after_forward is None else par.reshard_after_forward
    return Degrees(par.dp_replicate, dp_shard, par.tp, par.pp, par.zero_stage, reshard, par.cpu_offload, par.ep)


def strategy_spec(cfg: Config, world: int) -> Any:
    """What ``build_strategy`` gets: ``train.strategy`` unless ``parallel`` picks it (ZeRO-0 or one process:
    ``auto``; ZeRO-1/2/3: ``fsdp`` with the resolved degrees, ``train.strategy``'s own fsdp arguments kept;
    ``tp`` > 1 adds ``tp``, ``sequence_parallel``, ``loss_parallel`` to ``fsdp``; ``pp`` > 1: ``pipeline``;
    ``ep`` > 1: ``expert_parallel``)."""
    strategy = cfg.train.strategy
    if cfg.parallel is None:
        return strategy
    par, deg = cfg.parallel, resolve_degrees(cfg.parallel, world)
    if deg.ep > 1:
        return {"name": "expert_parallel", "ep": deg.ep, **strategy.kwargs}
    if deg.pp > 1:
        return {"name": "pipeline", "pp": deg.pp, "schedule": par.pp_schedule,
                "microbatches": par.pp_microbatches or deg.pp, "stages_per_rank": par.pp_stages_per_rank,
                "split": par.pp_split, "tp": deg.tp, "dp_replicate": deg.dp_replicate, "dp_shard": deg.dp_shard,
                "zero_stage": deg.zero_stage, "reshard_after_forward": par.reshard_after_forward,
                "sequence_parallel": par.sequence_parallel, **strategy.kwargs}  # fmt: skip
    if deg.zero_stage == 0 and par.comm is not None and world > 1:  # DDP with the section's all-reduce hook
        if strategy.name.lower() not in ("auto", "ddp"):
            raise ConfigError([f"parallel.comm: sets DDP's all-reduce, but train.strategy is {strategy.name!r}; "
                               "allowed: auto or ddp"])  # fmt: skip
        return {"name": "ddp", **strategy.kwargs, "comm": par.comm.model_dump()}
    if deg.zero_stage == 0 or (world == 1 and strategy.name.lower() == "auto" and not cfg.parallel.meta_init):
        return strategy  # auto: DDP on several ranks, the model as it is on one; or the named ddp/single_device
    fsdp = dict(zero_stage=deg.zero_stage, dp_replicate=deg.dp_replicate, dp_shard=deg.dp_shard,
                reshard_after_forward=cfg.parallel.reshard_after_forward, cpu_offload=deg.cpu_offload)  # fmt: skip
    if cfg.parallel.meta_init:  # on one process too: a model built on meta needs fsdp to give it memory
        fsdp["meta_init"] = True
    if deg.tp > 1:  # fsdp on the data dimension, the model's tensor-parallel plan on the tp one
        fsdp |= {"tp": deg.tp, "sequence_parallel": par.sequence_parallel, "loss_parallel": par.loss_parallel}
    if par.comm is not None:  # a hierarchical reduce-scatter (the config's rules allow hybrid or ring here)
        fsdp["comm"] = par.comm.model_dump()
    return {"name": "fsdp", **fsdp, **strategy.kwargs}


def check_model_degrees(cfg: Config, model: nn.Module) -> None:
    """ConfigError (one line each) unless ``model`` (may be on the meta device) takes ``cfg.parallel``'s
    degrees: ``tp`` divides the sizes its tensor-parallel plan shards, the ``pp x pp_stages_per_rank`` stages
    split its blocks (evenly, or as ``pp_split`` says), ``pp_microbatches`` divides ``data.batch_size``, and
    ``ep`` divides the experts of every MoE layer."""
    from deepseek.models.parallelize import check_tp
    from deepseek.nn.moe import MoE

    par = parallel_of(cfg)
    problems: list[str] = []
    if par.tp > 1:
        try:
            check_tp(model, par.tp)
        except ValueError as exc:  # no plan for this model, or sizes tp does not divide
            problems.append(str(exc))
    if par.pp > 1:
        blocks, stages = pipeline_blocks(model), par.pp * par.pp_stages_per_rank
        shown = f"pp x pp_stages_per_rank = {par.pp} x {par.pp_stages_per_rank} = {stages} stages"
        n = len(blocks) if blocks is not None else 0
        if blocks is None:
            problems.append(f"parallel: pp: {par.pp} needs a model with one list of blocks to split; "
                            f"{type(model).__name__} has none (allowed: pp 1)")  # fmt: skip
        elif par.pp_split is not None and sum(par.pp_split) != n:
            problems.append(f"parallel: pp_split: {par.pp_split} sums to {sum(par.pp_split)}, but the model has "
                            f"{n} blocks; allowed: {stages} numbers summing to {n}")  # fmt: skip
        elif stages > n:
            problems.append(f"parallel: {shown}, but the model has {n} blocks; allowed: at most {n}")
        elif par.pp_split is None and n % stages:
            problems.append(f"parallel: {shown} do not divide the model's {n} blocks; allowed: a divisor of {n}, "
                            "or parallel.pp_split")  # fmt: skip
        micro = par.pp_microbatches or par.pp
        if cfg.data.batch_size % micro:
            problems.append(f"parallel: pp_microbatches: {micro} does not divide data.batch_size "
                            f"{cfg.data.batch_size}; allowed: a divisor of the per-rank batch")  # fmt: skip
    if par.ep > 1:
        experts = sorted({m.num_experts for m in model.modules() if isinstance(m, MoE)})
        if not experts:
            problems.append(f"parallel: ep: {par.ep} needs a model with MoE layers; {type(model).__name__} has "
                            "none (allowed: ep 1)")  # fmt: skip
        elif any(n % par.ep for n in experts):
            problems.append(f"parallel: ep: {par.ep} does not divide the model's {', '.join(map(str, experts))} "
                            "experts; allowed: a common divisor")  # fmt: skip
    if problems:
        raise ConfigError(problems)


def optimizer_states_per_element(cfg: Config) -> tuple[int, int]:
    """(state tensors per parameter element, bytes per state element) of the configured optimizer, found by
    one step on a 4-element parameter (scalar states such as ``step`` do not count)."""
    param = nn.Parameter(torch.zeros(4))
    optimizer = build_optimizer(cfg.optim.name, [param], **cfg.optim.kwargs)
    param.grad = torch.ones(4)
    optimizer.step()
    per_param = [v for v in optimizer.state[param].values() if torch.is_tensor(v) and v.numel() == param.numel()]
    return len(per_param), max((v.element_size() for v in per_param), default=4)


def shard_rows(rows: int, shards: int, rank: int) -> int:
    """Rows of a dim-0 FSDP2 shard on ``rank`` (torch.chunk: ``ceil(rows / shards)`` each, the last ones short
    or empty)."""
    size = math.ceil(rows / shards)
    return max(0, min(size, rows - rank * size))


def local_numel(param: torch.Tensor, shards: int, rank: int) -> int:
    """Elements of ``param``'s FSDP2 shard held by ``rank`` of ``shards`` (unpadded)."""
    if param.dim() == 0:
        return 1
    return shard_rows(param.shape[0], shards, rank) * (param.numel() // max(param.shape[0], 1))


def padded_numel(param: torch.Tensor, shards: int) -> int:
    """Elements FSDP2 allocates for each rank's shard of ``param`` (padded to ``ceil(rows / shards)`` rows)."""
    if param.dim() == 0:
        return 1
    return math.ceil(param.shape[0] / shards) * (param.numel() // max(param.shape[0], 1))


def zero1_share(numels: list[int], ranks: int) -> int:
    """Elements of the largest share ``ZeroRedundancyOptimizer`` gives one of ``ranks``: whole parameters,
    largest first, each to the rank with the fewest elements so far (its own partitioning)."""
    sizes = [0] * ranks
    for numel in sorted(numels, reverse=True):
        sizes[sizes.index(min(sizes))] += numel
    return max(sizes)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one (FSDP2 units): every item of every ``nn.ModuleList`` (transformer
    blocks, as torchtitan wraps them); the root takes the rest."""
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]


@dataclass
class Plan:
    """A plan for ``world`` ranks; byte counts are per rank."""

    world: int
    degrees: dict[str, Any]
    strategy: str
    device: str
    device_bytes: int
    parameter_count: int
    memory: dict[str, int | None]  # parameters, gradients, optimizer_state, activations, gathered, host
    collectives: dict[str, int]  # collective name -> bytes each rank sends per step
    notes: list[str] = field(default_factory=list)
    dimensions: dict[str, Any] = field(default_factory=dict)  # tp / pp / dp under tp or pp: see plan_dims

    @property
    def device_total(self) -> int:
        return sum(v or 0 for k, v in self.memory.items() if k != "host")

    @property
    def fits(self) -> bool:
        if self.device == "cpu":  # every rank of `deepseek launch` shares this machine's RAM (offloaded state too)
            return (self.device_total + (self.memory["host"] or 0)) * self.world <= HEADROOM * self.device_bytes
        return self.device_total <= HEADROOM * self.device_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "device_total": self.device_total, "fits": self.fits}


def device_bytes(device: str) -> int:
    """Memory of one ``device`` (``cpu``: this machine's RAM)."""
    if device == "cpu":
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return DEVICE_MEMORY[device]


def make_plan(cfg: Config, model: nn.Module, world: int, device: str, activations: int | None,
              boundary: tuple[tuple[int, ...], int] | None = None) -> Plan:  # fmt: skip
    """The plan of ``cfg`` for ``world`` ranks on ``device``; ``model`` built (on the meta device) from it;
    ``boundary``: (shape, element size) of one block's output for a per-rank batch (see
    :func:`deepseek.train.plan_inputs.boundary_shape`), for the tp and pp traffic."""
    par = parallel_of(cfg)
    deg = resolve_degrees(par, world)
    count = sum(p.numel() for p in model.parameters())  # tied weights once
    dims = rank_dimensions(cfg, par, deg, model, activations, boundary)
    params, activations = dims.pop("params"), dims.pop("activations")
    full = sum(p.numel() * p.element_size() for p in params)
    shards = deg.dp_shard if deg.zero_stage >= 1 else 1
    sharded = sum(padded_numel(p, shards) * p.element_size() for p in params)
    states, state_size = optimizer_states_per_element(cfg)
    opt_full = states * state_size * count
    if deg.zero_stage == 1:  # ZeroRedundancyOptimizer partitions whole parameters
        opt = states * state_size * zero1_share([p.numel() for p in params], shards)
    else:
        opt = states * state_size * sum(padded_numel(p, shards) for p in params)
    parameters = gradients = sharded if deg.zero_stage >= 2 else full  # FSDP2 allocates each rank's shard
    optimizer = opt if deg.zero_stage >= 1 else opt_full
    gathered = full if deg.zero_stage == 2 and shards > 1 else 0  # kept gathered from forward to backward
    if deg.zero_stage == 3 and shards > 1:  # the root's own parameters stay gathered; blocks come and go
        sizes = sorted(dims.pop("block_bytes", None) or
                       (sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks_of(model)))  # fmt: skip
        gathered = full - sum(sizes) + sum(sizes[-2:])  # the running block and the prefetched next one
    dims.pop("block_bytes", None)
    host = 0
    if deg.cpu_offload and deg.zero_stage >= 1:  # FSDP2 CPUOffloadPolicy: sharded state lives in host memory
        host, parameters, gradients, optimizer = parameters + gradients + optimizer, 0, 0, 0
    memory = dict(parameters=parameters, gradients=gradients, optimizer_state=optimizer, activations=activations,
                  gathered=gathered, host=host)  # fmt: skip
    name = "single_device" if world == 1 else ("ddp" if deg.zero_stage == 0 else "fsdp")
    if cfg.parallel is None and cfg.train.strategy.name.lower() not in ("auto", "ddp", "fsdp", "single", "single_device"):
        name = cfg.train.strategy.name
    notes = [f"global batch = data.batch_size {cfg.data.batch_size} x dp {deg.dp} x accumulate_grad_batches "
             f"{cfg.train.accumulate_grad_batches} = {cfg.data.batch_size * deg.dp * cfg.train.accumulate_grad_batches}"]  # fmt: skip
    if activations is None:
        notes.append("activations: not estimated (the model's forward cannot run on the meta device with a sample)")
    if deg.tp > 1 or deg.pp > 1:
        name = "pipeline" if deg.pp > 1 else name
        notes += dims.pop("notes")
    else:
        dims.pop("notes")
    gathers = cfg.train.accumulate_grad_batches * (par.pp_microbatches or deg.pp)  # FSDP2 gathers per micro-batch
    dp = collectives(deg, full, gathers)
    if deg.tp > 1 or deg.pp > 1:
        dims["dp"] = {"degree": deg.dp, "parameters": full, "collectives": dp}
    plan_collectives = {**dims.get("tp", {}).get("collectives", {}), **dims.get("pp", {}).get("collectives", {}), **dp}
    return Plan(world, asdict(deg), name, device, device_bytes(device), count, memory, plan_collectives, notes,
                dims)  # fmt: skip



def collectives(deg: Degrees, param_bytes: int, micro_batches: int = 1) -> dict[str, int]:
    """Bytes each rank sends per optimizer step, by collective (ring algorithms; see the module docstring)."""
    if deg.dp == 1:
        return {}
    if deg.zero_stage == 0:
        return {"all_reduce (gradients)": round(2 * (deg.dp - 1) / deg.dp * param_bytes)}
    n = deg.dp_shard
    part = round((n - 1) / n * param_bytes)
    if deg.zero_stage == 1:  # DDP's all-reduce, then each rank broadcasts the parameters it stepped
        return {"all_reduce (gradients)": 2 * part, "broadcast (parameters)": part}
    gathers = 1 if deg.zero_stage < 3 else micro_batches * (2 if deg.reshard_after_forward else 1)
    out = {"all_gather (parameters)": gathers * part, "reduce_scatter (gradients)": part}
    if deg.dp_replicate > 1:
        r = deg.dp_replicate
        out["all_reduce (across replicas)"] = round(2 * (r - 1) / r * param_bytes / n)
    return out
