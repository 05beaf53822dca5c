"""The ``pipeline`` strategy: pipeline parallelism on ``torch.distributed.pipelining`` (GPipe, 1F1B, interleaved 1F1B).

The model is cut into ``pp * stages_per_rank`` stages of consecutive blocks
(:mod:`deepseek.models.parallelize.stages`: even by default, or ``split`` blocks per stage); rank ``r`` of a
pipeline holds stages ``r, r + pp, ...`` and the model keeps only what those stages hold, under the whole
model's parameter names. Ranks are laid out row-major over the mesh ``("pp", "dp_replicate", "dp_shard")``
(pp outermost; with ``tp`` > 1 a trailing ``"tp"``: each stage is first sharded over it by the model's
tensor-parallel plan, gpt2's); with a data-parallel degree above 1 each stage is sharded with FSDP2 ``fully_shard`` over
the data-parallel mesh (its blocks, then the stage), ZeRO-2 by default (``reshard_after_forward`` false: a
block's parameters stay gathered across the micro-batches of a step).

The schedule owns the step: :class:`~deepseek.train.step.OptimizerStep` hands the accumulation window to
:meth:`Pipeline.run_window`, which runs the schedule once per batch (the first stage is fed the inputs, the
last the targets and the loss function) and returns the window's loss, broadcast from the last stage. Each
micro-batch's loss is weighted by its share of the window's samples over all data-parallel ranks, and the
schedule's own gradient scaling is off, so a window's gradients equal one batch's. Everything after the
backward stays in OptimizerStep (clipping over all stages, optimizer, scheduler, EMA per stage).

gpt2 ties its head to its token embedding: with pp > 1 the first and the last stage each hold a copy, made
equal at setup (the first stage's is sent to the last) and kept equal by summing their gradients across the
two ranks before each optimizer step (Megatron's way); the gradient norm counts the copy once.

State: the full model's state is gathered to rank 0 for checkpoints and ``final/`` (a collective);
loading takes the full state on every rank and each keeps its stages' part. Validation runs the stages one
after another (forward only) and shares the last stage's outputs with the pipeline's ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from deepseek.registry import register_strategy
from deepseek.train.batching import move_to, split_batch
from deepseek.train.distributed import DistInfo, init_one_rank_group
from deepseek.train.fsdp import block_modules
from deepseek.train.metrics import batch_size_of
from deepseek.train.pipeline_state import (
    PipelinedForward,
    check_pipeline_tp,
    gather_to_rank0,
    merge_optimizer_states,
    to_cpu,
)

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


def _bad(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"train.strategy: pipeline {key}: {value!r} is not allowed; {allowed}")


def _positive(key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad(key, value, "use an integer >= 1")
    return value


@register_strategy("pipeline")
class Pipeline:
    """Pipeline parallelism (x FSDP2 on the data dimension); see the module docstring."""

    collective_state_dict = True  # every rank takes part in each checkpoint; rank 0 writes the whole model

    def __init__(
        self,
        pp: int = 2,
        schedule: str = "1f1b",
        microbatches: int | None = None,
        stages_per_rank: int = 1,
        split: list[int] | None = None,
        tp: int = 1,
        dp_replicate: int = 1,
        dp_shard: int = -1,
        zero_stage: int = 2,
        reshard_after_forward: bool | None = None,
        sequence_parallel: bool = False,
    ) -> None:
        self.pp, self.stages_per_rank = _positive("pp", pp), _positive("stages_per_rank", stages_per_rank)
        if schedule not in SCHEDULES:
            raise _bad("schedule", schedule, f"use one of {', '.join(SCHEDULES)}")
        if (schedule == "interleaved_1f1b") != (stages_per_rank > 1):
            raise _bad("stages_per_rank", stages_per_rank, "interleaved_1f1b needs 2 or more, gpipe and 1f1b need 1")
        self.microbatches = pp if microbatches is None else _positive("microbatches", microbatches)
        if schedule != "gpipe" and self.microbatches < pp:
            raise _bad("microbatches", microbatches, f"{schedule} needs at least pp = {pp}")
        self.tp = _positive("tp", tp)
        if sequence_parallel:  # its residual stream is a sequence shard: not what crosses the stages here
            raise _bad("sequence_parallel", sequence_parallel, "pipeline parallelism runs with tp 1 or "
                       "plain tensor parallelism (no sequence parallelism) for now")  # fmt: skip
        self.dp_replicate = _positive("dp_replicate", dp_replicate)
        if not isinstance(dp_shard, int) or (dp_shard < 1 and dp_shard != -1):
            raise _bad("dp_shard", dp_shard, "use an integer >= 1, or -1 for the rest of the world")
        if zero_stage not in (2, 3) or isinstance(zero_stage, bool):
            raise _bad("zero_stage", zero_stage, "use 2 or 3 (the data dimension runs FSDP2)")
        if reshard_after_forward is not None and reshard_after_forward != (zero_stage == 3):
            raise _bad("reshard_after_forward", reshard_after_forward, f"it contradicts zero_stage {zero_stage}")
        self.schedule_name, self.split, self.dp_shard, self.zero_stage = schedule, split, dp_shard, zero_stage
        self.mesh: Any = None
        self.stages: list[Any] = []  # this rank's stage modules
        self._schedule: Any = None  # the schedule running now
        self._schedules: dict[tuple[Any, ...], Any] = {}  # one per batch shape (see run_window)
        self._loss: Callable[..., torch.Tensor] | None = None
        self._names: dict[int, str] = {}
        self._tied: list[nn.Parameter] = []  # this rank's copies of parameters tied across ranks
        self._tied_names: list[str] = []  # their names (sharding replaces the parameter objects)
        self._tied_group: Any = None
        self._uncounted: set[int] = set()  # ids of tied copies the gradient norm skips (counted on the first stage)
        self._tied_pairs: list[tuple[str, str]] = []

    # ------------------------------------------------------------------------------- set-up
    def mesh_shape(self, world_size: int) -> tuple[int, ...]:
        """``(pp, dp_replicate, dp_shard)``, with a trailing ``tp`` when it is above 1 (see :meth:`mesh_dim_names`);
        ValueError when the degrees do not make ``world_size``."""
        fixed = self.pp * self.dp_replicate * self.tp
        shard = world_size // fixed if self.dp_shard == -1 else self.dp_shard
        if shard < 1 or fixed * shard != world_size:
            tp = f" x tp {self.tp}" if self.tp > 1 else ""
            raise ValueError(f"train.strategy: pipeline pp {self.pp} x dp_replicate {self.dp_replicate} x dp_shard "
                             f"{self.dp_shard}{tp} does not make the world size {world_size}")  # fmt: skip
        return (self.pp, self.dp_replicate, shard, self.tp) if self.tp > 1 else (self.pp, self.dp_replicate, shard)

    def mesh_dim_names(self) -> tuple[str, ...]:
        """The names of :meth:`mesh_shape`'s dims, in :data:`deepseek.train.mesh_layout.MESH_DIMS` order."""
        return ("pp", "dp_replicate", "dp_shard", "tp") if self.tp > 1 else ("pp", "dp_replicate", "dp_shard")

    def setup(self, model: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
        """Cut ``model`` to this rank's stages (in place), shard them over the data dimension when it has
        several ranks, and return the model (now holding only those stages)."""
        from torch.distributed.device_mesh import init_device_mesh

        # late: the parallelize package imports DTensor (and with it sympy), half a second of every `import deepseek`
        from deepseek.models.parallelize.stages import build_stages, family_of, tied_names

        if not torch_dist.is_initialized():  # a plain process: a world of one, on a group of its own
            init_one_rank_group(device)
        family_of(model)  # a one-line error for a model with no stages, before anything changes
        shape = self.mesh_shape(torch_dist.get_world_size())
        if self.tp > 1:
            check_pipeline_tp(model, self.tp)
        self.mesh = init_device_mesh(device.type, shape, mesh_dim_names=self.mesh_dim_names())
        pp_rank = self.mesh.get_local_rank("pp")
        self._pp_group = self.mesh.get_group("pp")
        self._pp_ranks = torch_dist.get_process_group_ranks(self._pp_group)  # global ranks, by stage rank
        self._tied_pairs = tied_names(model)
        # The whole model's state names (tied ones share a number), for the ranks a gathered state skips.
        ids: dict[int, int] = {}
        self._whole_names = {n: ids.setdefault(id(t), len(ids)) for n, t in model.state_dict(keep_vars=True).items()}
        num_stages = self.pp * self.stages_per_rank
        indices = [pp_rank + k * self.pp for k in range(self.stages_per_rank)]
        self.stages = build_stages(model, indices, num_stages, self.split)
        self._tie_across_ranks(model)  # full tensors: before the tensor-parallel plan shards them
        self._names = {id(p): name for name, p in model.named_parameters()}
        if self.tp > 1:  # the plan first, then FSDP2 over the data dims (torchtitan's order)
            from deepseek.models.parallelize import plan_for_model

            for stage in self.stages:  # stages share the model's modules: the model's parameters are sharded too
                plan_for_model(model)(stage, self.mesh["tp"])
        if shape[1] * shape[2] > 1:
            self._shard_data_parallel(model, shape)
        held = dict(model.named_parameters())
        self._tied = [held[name] for name in self._tied_names]
        # The gradient norm counts a tied parameter once: on the first stage's rank, not the last's copy.
        self._uncounted = {id(held[n]) for n in self._tied_names if n in {last for _, last in self._tied_pairs}}
        self._device = device
        return model

    def _tie_across_ranks(self, model: nn.Module) -> None:
        """Tied parameters whose names ended up on the first and the last stage's ranks: the last stage's copy
        starts as the first's, and their gradients are summed over the two ranks each step."""
        if self.pp == 1 or not self._tied_pairs:
            return
        # One group per pipeline: its first and last rank; every rank creates every group, in one order.
        mesh = self.mesh.mesh.reshape(self.pp, -1)
        for column in range(mesh.shape[1]):
            ends = [int(mesh[0, column]), int(mesh[-1, column])]
            group = self._pp_group if self.pp == 2 else torch_dist.new_group(ends)
            if torch_dist.get_rank() in ends:
                self._tied_group, src = group, ends[0]
        held = dict(model.named_parameters())
        for first_name, last_name in self._tied_pairs:
            mine = held.get(first_name, held.get(last_name))
            if mine is None:  # a middle stage
                continue
            self._tied_names.append(first_name if first_name in held else last_name)
            with torch.no_grad():
                torch_dist.broadcast(mine.data, src=src, group=self._tied_group)

    def _shard_data_parallel(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        from torch.distributed.fsdp import fully_shard

        dp_mesh = self.mesh["dp_replicate", "dp_shard"] if shape[1] > 1 else self.mesh["dp_shard"]
        kwargs = {"mesh": dp_mesh, "reshard_after_forward": self.zero_stage == 3}
        for stage in self.stages:
            for block in block_modules(stage):
                if any(p.numel() for p in block.parameters()):  # the pass-throughs hold nothing to shard
                    fully_shard(block, **kwargs)
            fully_shard(stage, **kwargs)
            for name, param in stage.named_parameters(recurse=False):  # vit's cls and pos: the model's own
                setattr(model, name, param)  # attributes, which sharding replaced on the stage alone

    def setup_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
        """``optimizer`` with its groups cut to this rank's parameters (the sharded ones, by name, under FSDP2)."""
        held = dict(model.named_parameters())
        held_ids = {id(p) for p in held.values()}
        if all(id(p) in held_ids for g in optimizer.param_groups for p in g["params"]):
            return optimizer  # set up already (a second fit()), or nothing to cut
        if optimizer.state:
            raise ValueError("train.strategy: pipeline needs a fresh optimizer (one that has not stepped yet); "
                             "resume from a checkpoint instead")  # fmt: skip
        for group in optimizer.param_groups:
            names = [self._names.get(id(p)) for p in group["params"]]  # None: a parameter of another rank's stage
            group["params"] = [held[n] for n in names if n is not None and n in held]
        return optimizer

    # ------------------------------------------------------------------------------- steps
    def check_step(self, step_fn: Any, model: nn.Module) -> None:
        """ValueError (one line) for what a pipelined step cannot run: a custom step_fn, auxiliary losses."""
        if step_fn is not None:
            raise ValueError("train.strategy: pipeline runs the default step (loss_fn on the last stage); "
                             "a custom step_fn is not supported under pipeline parallelism")  # fmt: skip
        if any(hasattr(m, "aux_loss") for m in model.modules()):
            raise ValueError("train.strategy: pipeline does not support auxiliary losses (MoE load balancing): "
                             "they live on every stage, the loss on the last one")  # fmt: skip

    def _schedule_for(self, batch: Any) -> Any:
        """The schedule (and torch ``PipelineStage`` objects) for batches shaped like ``batch``: a stage infers
        the shapes it sends and receives from its first micro-batch, so each shape gets its own (a short last
        batch, another sequence length). Every rank of a pipeline sees the same batches: they build alike."""
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
        from torch.utils._pytree import tree_leaves

        if (n := batch_size_of(batch)) % self.microbatches:
            raise ValueError(f"train.strategy: pipeline microbatches: {self.microbatches} does not divide a batch of "
                             f"{n} samples; use a batch size it divides (and drop_last for a short last batch)")  # fmt: skip
        shape = tuple(tuple(t.shape) for t in tree_leaves(batch) if isinstance(t, torch.Tensor))
        if shape not in self._schedules:
            stages = [PipelineStage(s, s.index, s.num_stages, self._device, group=self._pp_group) for s in self.stages]
            kwargs = {"n_microbatches": self.microbatches, "loss_fn": self._weighted_loss, "scale_grads": False}
            if self.schedule_name == "interleaved_1f1b":
                self._schedules[shape] = ScheduleInterleaved1F1B(stages, **kwargs)
            else:
                cls = ScheduleGPipe if self.schedule_name == "gpipe" else Schedule1F1B
                self._schedules[shape] = cls(stages[0], **kwargs)
        return self._schedules[shape]

    def _weighted_loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """One micro-batch's loss, weighted by its share of the window's samples over all data-parallel ranks
        (the gradients then sum to one batch's mean; FSDP2 averages over the data-parallel ranks)."""
        assert self._loss is not None
        if not self._backward_initialized():  # torch's shape inference before the first step: no real loss
            return outputs.sum()  # shapes only; keeps a loss_fn with side effects from seeing an extra call
        loss = self._loss(outputs, targets)
        n = batch_size_of(targets)
        self._window_losses.append(loss.detach().float() * n)
        scaled = loss * (n * self._dp_world / self._window_total)
        return self._scale_loss(scaled) if self._scale_loss is not None else scaled

    def _backward_initialized(self) -> bool:
        # torch 2.13's schedules infer the stages' gradient shapes at their first step by calling loss_fn once
        # on the first micro-batch (input gradients only): these flags say whether that has happened.
        schedule = self._schedule
        return bool(getattr(schedule, "_stage_backward_initialized", getattr(schedule, "_stages_backward_initialized", True)))

    def run_window(
        self,
        window: list[Any],
        loss_fn: Callable[..., torch.Tensor],
        device: torch.device,
        scale_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Forward and backward every batch of ``window`` through the schedule; returns the window's mean loss
        (a scalar, the same on every rank of the pipeline) and this rank's sample count."""
        sizes = [batch_size_of(b) for b in window]
        local = sum(sizes)
        # Every rank of one pipeline holds the same batches: the data-parallel total is the world's / pp.
        total = torch.tensor([float(local)], dtype=torch.float64, device=self._comm_device(device))
        torch_dist.all_reduce(total)
        self._window_total, self._dp_world = total.item() / self.pp, torch_dist.get_world_size() // self.pp
        self._loss, self._scale_loss, self._window_losses = loss_fn, scale_loss, []
        has_first = any(s.is_first for s in self.stages)
        has_last = any(s.is_last for s in self.stages)
        from deepseek.models.parallelize.stages import first_stage_args

        for batch in window:
            inputs, targets = split_batch(move_to(batch, device))
            args = first_stage_args(inputs) if has_first else ()
            self._schedule = self._schedule_for(batch)
            self._schedule.step(*args, target=targets if has_last else None, return_outputs=False)
        logged = torch.stack(self._window_losses).sum() / local if has_last else torch.zeros((), device=device)
        self._sum_tied_gradients()
        return self.broadcast_from_last(logged.to(self._comm_device(device))).to(device), local

    def _comm_device(self, device: torch.device) -> torch.device:
        return torch.device("cpu") if torch_dist.get_backend() == "gloo" else device

    def broadcast_from_last(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` of the pipeline's last stage, on each of its ranks (in place)."""
        if self.pp > 1:
            torch_dist.broadcast(value, src=self._pp_ranks[-1], group=self._pp_group)
        return value

    def _sum_tied_gradients(self) -> None:
        for p in self._tied:
            if p.grad is None:  # both ranks take part in every reduction
                p.grad = torch.zeros_like(p)
            if hasattr(p.grad, "placements") and p.grad.placements != p.placements:
                # a vocab-parallel embedding's gradient comes back replicated (the whole table): this rank's
                # vocabulary shard, as the head's on the last stage (the same tp index) holds it
                p.grad = p.grad.redistribute(p.device_mesh, p.placements)
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            torch_dist.all_reduce(grad, group=self._tied_group)

    def no_sync(self, train_model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # run_window owns the window: gradients reduce per schedule step

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip to a global 2-norm of ``max_norm`` over every stage (and data-parallel shard); returns it."""
        params = [p for p in model.parameters() if p.grad is not None]
        device = params[0].grad.device if params else torch.device("cpu")
        # DTensor cannot mix meshes in one op: under tp the plan's parameters live on the tp (or data x tp)
        # mesh, the rest (norms, positions) on the data mesh or none; each mesh's norm is reduced on its own
        # (a shard counts on its rank, a replica once), and the squares summed.
        by_mesh: dict[Any, list[torch.Tensor]] = {}
        for p in params:
            if id(p) not in self._uncounted:
                by_mesh.setdefault(getattr(p.grad, "device_mesh", None), []).append(p.grad)
        squared = torch.zeros(1, dtype=torch.float32, device=self._comm_device(device))
        for grads in by_mesh.values():
            norm = nn.utils.get_total_norm(grads, norm_type=2.0)
            if hasattr(norm, "full_tensor"):  # a DTensor, partial over the shards
                norm = norm.full_tensor()
            squared += (norm.float() ** 2).reshape(1).to(squared.device)
        torch_dist.all_reduce(squared, group=self._pp_group)
        norm = squared.sqrt()[0].to(device)
        for mesh in {getattr(p.grad, "device_mesh", None) for p in params}:  # one foreach per kind of tensor
            nn.utils.clip_grads_with_norm_([p for p in params if getattr(p.grad, "device_mesh", None) == mesh],
                                           max_norm, norm)  # fmt: skip
        return norm

    # ------------------------------------------------------------------------------- state
    def _local_state(self, model: nn.Module) -> dict[str, Any]:
        """This rank's stages' full (unsharded) state on the CPU; a collective over the data-parallel ranks."""
        state = {}
        for name, tensor in model.state_dict().items():
            # clone: a gathered tensor may be a view into a padded buffer, which safetensors refuses to write
            state[name] = (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).detach().cpu().clone()
        return state

    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The whole model's state on rank 0 (elsewhere its names, with 1-element placeholders); a collective."""
        merged = gather_to_rank0(self._local_state(model), self._first_of_data_parallel())
        if merged is None:  # the whole model's names (what a loader checks a file against), not its tensors
            shared: dict[int, torch.Tensor] = {}
            return {name: shared.setdefault(tie, torch.zeros(1)) for name, tie in self._whole_names.items()}
        state: dict[str, Any] = {}
        for part in merged:
            state.update(part)
        for first, last in self._tied_pairs:  # one tensor again, as the whole model's state holds it
            if first in state:
                state[last] = state[first]
        return state

    def _first_of_data_parallel(self) -> bool:
        tp_first = self.tp == 1 or self.mesh.get_local_rank("tp") == 0  # the tp ranks gathered the same tensors
        return tp_first and self.mesh.get_local_rank("dp_replicate") == 0 and self.mesh.get_local_rank("dp_shard") == 0

    def load_model_state_dict(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        """Load a full state that every rank holds; each keeps its stages' part (and its shards)."""
        names = model.state_dict()
        own = {k: v for k, v in state.items() if k in names}
        for pair in self._tied_pairs:  # a file stores tied tensors once, under either name: a copy from its twin
            for mine, twin in (pair, pair[::-1]):
                if mine in names and mine not in own and twin in state:
                    own[mine] = state[twin]
        if self.mesh is not None and self.mesh.size() > self.pp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, own, options=StateDictOptions(full_state_dict=True, strict=False))
        else:
            model.load_state_dict(own, strict=False)

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state keyed by parameter name on rank 0 (``{}`` elsewhere); a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        local = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
        local = to_cpu(local)
        merged = gather_to_rank0(local, self._first_of_data_parallel())
        return merge_optimizer_states(merged) if merged is not None else {}

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        own = set(dict(model.named_parameters()))
        mine = {
            "state": {k: v for k, v in state["state"].items() if k in own},
            "param_groups": [{**g, "params": [k for k in g["params"] if k in own]} for g in state["param_groups"]],
        }
        options = StateDictOptions(full_state_dict=True, strict=False)
        set_optimizer_state_dict(model, optimizer, mine, options=options)

    def eval_module(self, model: nn.Module, train_model: nn.Module) -> nn.Module:
        """The stages run one after another (forward only); every rank of the pipeline gets the outputs."""
        return PipelinedForward(model, self.stages, self.pp, self._pp_group, self._pp_ranks)

    def teardown(self, train_model: nn.Module) -> nn.Module:
        """The model, holding this rank's stages only (the whole model's weights come out through
        :meth:`model_state_dict`: ``final/``)."""
        self._schedule, self._schedules = None, {}
        return train_model
