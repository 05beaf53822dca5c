"""The ``fsdp`` strategy: ZeRO-1/2/3 and HSDP on torch's own machinery (DeviceMesh, FSDP2 ``fully_shard``).

How each setting maps onto torch (as torchtitan documents its own):

- ZeRO-3 (``zero_stage: 3``, the default): ``fully_shard(reshard_after_forward=True)``; parameters,
  gradients and optimizer state are sharded; each block's parameters are all-gathered for its forward
  and again for its backward, and gradients are reduce-scattered.
- ZeRO-2 (``zero_stage: 2``): ``fully_shard(reshard_after_forward=False)``; parameters stay gathered
  from a block's forward to its backward (one all-gather per step), gradients and optimizer state are sharded.
- ZeRO-1 (``zero_stage: 1``): DDP-style replicated parameters and gradients (``DistributedDataParallel``,
  one all-reduce) with the optimizer state sharded by ``torch.distributed.optim.ZeroRedundancyOptimizer``
  (each rank steps its share of the parameters and broadcasts them). The Trainer builds the optimizer
  before the strategy, so :meth:`FSDP.setup_optimizer` wraps it (same class, groups and hyperparameters).
- HSDP (``dp_replicate: R`` > 1, ZeRO-2/3): a 2-D mesh ``("dp_replicate", "dp_shard")``; parameters are
  sharded inside each group of ``dp_shard`` ranks and replicated across the ``R`` groups (gradients:
  reduce-scatter in a group, all-reduce across groups).
- 2-D data x tensor parallelism (``tp: T`` > 1, ZeRO-2/3): a mesh ``("dp_shard", "tp")`` (or
  ``("dp_replicate", "dp_shard", "tp")``), ranks laid out as :mod:`deepseek.train.mesh_layout` says (tp
  innermost); the model's tensor-parallel plan (:mod:`deepseek.models.parallelize`) shards it over ``tp``
  first, then ``fully_shard`` shards each block and the root over the data dims (torchtitan's order), so
  every parameter is a DTensor on the 2-D mesh. The ranks of one tp group must read the same batch
  (``build_loaders`` does). ``sequence_parallel`` / ``loss_parallel`` go to the plan; under ``loss_parallel``
  the Trainer computes the loss and its backward inside :meth:`FSDP.loss_context`.

``dp_shard: -1`` takes the rest of the world (``world // (dp_replicate x tp)``). Which modules are sharded
separately: the children of the model's largest ``nn.ModuleList`` (a transformer's blocks, e.g. gpt2's
``blocks``; every ModuleList of that length when several are), then the root, which holds the rest
(embeddings, final norm, a tied head). ``comm: {topology: hybrid, ring_size: g}`` (``parallel.comm``, ZeRO-2/3
on a 1-D data mesh) replaces FSDP2's gradient reduce-scatter with a two-level one (inside each node of ``g``
ranks, then across nodes: :mod:`deepseek.distributed.fsdp_comm`), timed for the ``comm/*`` metrics.
``param_dtype`` / ``reduce_dtype`` (``bf16``, ``fp16``, ``fp32``)
build a ``MixedPrecisionPolicy``; ``cpu_offload`` a ``CPUOffloadPolicy`` (parameters, gradients and
optimizer state live on the CPU). ``meta_init`` (ZeRO-2/3): the model was built on the meta device
(:mod:`deepseek.train.meta_init`); setup gives each rank memory for its shards and replays the model's init.
In a plain process (no launcher, no group) setup makes a one-rank group that ``fit()`` removes at its end.

State for checkpoints and ``final/`` is the full, unsharded state (``torch.distributed.checkpoint.state_dict``
with ``full_state_dict=True, cpu_offload=True``): gathering it is a collective every rank calls, and only
rank 0 receives it (the others get ``{}``); loading takes the full state on every rank and shards it.
Checkpoints under ZeRO-2/3 are sharded by default instead (``checkpoint.sharded``: each rank writes its own
shards through DCP, :mod:`deepseek.train.sharded_checkpoint`); ``final/`` and ``sharded: false`` use these methods.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from deepseek.registry import register_strategy
from deepseek.train.comm import check_comm_spec
from deepseek.train.distributed import DistInfo, init_one_rank_group
from deepseek.train.meta_init import initialise_shards, is_on_meta, parameter_names
from deepseek.train.strategy import DDP

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}  # fmt: skip
# torch's FSDP2, DTensor, DCP and ZeRO modules are imported where used: together they take seconds to
# import, which every `import deepseek` (this module registers the strategy) would otherwise pay.


def _full_state_options(loading: bool = False) -> Any:
    """Full (unsharded) state: gathered to rank 0 on the CPU; loaded from the full state every rank holds
    (not strict: a file stores tied parameters once)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if loading:
        return StateDictOptions(full_state_dict=True, strict=False)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The modules sharded one by one: the children of the model's largest ``nn.ModuleList``(s)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        return []
    longest = max(len(m) for m in lists)
    return [block for m in lists if len(m) == longest for block in m]


@register_strategy("fsdp")
class FSDP(DDP):
    """ZeRO-1/2/3 and HSDP over the default process group; see the module docstring for the mapping."""

    collective_state_dict = True  # the Trainer has every rank gather checkpoint state; rank 0 writes it

    def __init__(
        self,
        zero_stage: int = 3,
        dp_replicate: int = 1,
        dp_shard: int = -1,
        reshard_after_forward: bool | None = None,
        cpu_offload: bool = False,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        meta_init: bool = False,
        tp: int = 1,
        sequence_parallel: bool = False,
        loss_parallel: bool = False,
        comm: dict[str, Any] | None = None,
    ) -> None:
        def bad(key: str, value: Any, allowed: str) -> ValueError:
            return ValueError(f"train.strategy: fsdp {key}: {value!r} is not allowed; {allowed}")

        if zero_stage not in (1, 2, 3) or isinstance(zero_stage, bool):
            raise bad("zero_stage", zero_stage, "use 1, 2 or 3")
        if not isinstance(dp_replicate, int) or dp_replicate < 1:
            raise bad("dp_replicate", dp_replicate, "use an integer >= 1")
        if not isinstance(dp_shard, int) or (dp_shard < 1 and dp_shard != -1):
            raise bad("dp_shard", dp_shard, "use an integer >= 1, or -1 for the rest of the world")
        for key, value in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
            if value is not None and value not in DTYPES:
                raise bad(key, value, f"use one of {', '.join(DTYPES)}, or leave it unset")
        if reshard_after_forward is not None and (zero_stage == 1 or reshard_after_forward != (zero_stage == 3)):
            raise ValueError(
                f"train.strategy: fsdp reshard_after_forward: {reshard_after_forward} contradicts zero_stage "
                f"{zero_stage} (ZeRO-3 reshards after forward, ZeRO-2 does not, ZeRO-1 does not shard parameters)"
            )
        if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
            raise bad("tp", tp, "use an integer >= 1")
        if tp > 1 and zero_stage == 1:
            raise bad("zero_stage", zero_stage, "tp > 1 runs FSDP2 on the data dimension: use 2 or 3")
        for key, value in (("sequence_parallel", sequence_parallel), ("loss_parallel", loss_parallel)):
            if value and tp == 1:
                raise bad(key, value, "it needs tp > 1 (it shards over the tensor-parallel dimension)")
        if zero_stage == 1 and (dp_replicate != 1 or cpu_offload or param_dtype or reduce_dtype):
            raise ValueError("train.strategy: fsdp zero_stage 1 shards only optimizer state over the whole world; "
                             "dp_replicate, cpu_offload, param_dtype and reduce_dtype need zero_stage 2 or 3")  # fmt: skip
        super().__init__()
        self.comm = check_comm_spec(comm)
        if self.comm and (self.comm["topology"] == "tree" or self.comm["compression"] != "none" or zero_stage == 1
                          or dp_replicate != 1 or tp != 1):  # fmt: skip
            raise bad("comm", comm, "under fsdp, topology ring or hybrid (a hierarchical reduce-scatter) with "
                      "compression none, zero_stage 2 or 3, dp_replicate 1 and tp 1")  # fmt: skip
        self.zero_stage, self.dp_replicate, self.dp_shard = zero_stage, dp_replicate, dp_shard
        self.reshard_after_forward = zero_stage == 3
        self.cpu_offload, self.param_dtype, self.reduce_dtype = cpu_offload, param_dtype, reduce_dtype
        if meta_init and zero_stage == 1:
            raise bad("meta_init", meta_init, "it needs zero_stage 2 or 3 (ZeRO-1 holds the whole model on every rank)")
        self.meta_init = bool(meta_init)  # the model is built on the meta device (deepseek.train.meta_init)
        self.tp, self.sequence_parallel, self.loss_parallel = tp, bool(sequence_parallel), bool(loss_parallel)
        self.mesh: Any = None  # the DeviceMesh of ZeRO-2/3, set by setup
        self._names: dict[int, str] = {}  # id of each parameter before sharding -> its name

    # ------------------------------------------------------------------------------- set-up
    def mesh_shape(self, world_size: int) -> tuple[int, ...]:
        """``(dp_shard,)``, or ``(dp_replicate, dp_shard)`` for HSDP, each with a trailing ``tp`` when
        ``tp`` > 1 (see :meth:`mesh_dim_names`); ValueError when it does not fill the world."""
        fixed = self.dp_replicate * self.tp
        shard = world_size // fixed if self.dp_shard == -1 else self.dp_shard
        if shard < 1 or fixed * shard != world_size:
            tp = f" x tp {self.tp}" if self.tp > 1 else ""
            raise ValueError(
                f"train.strategy: fsdp dp_replicate {self.dp_replicate} x dp_shard {self.dp_shard}{tp} does not "
                f"make the world size {world_size}; the degrees must multiply to it (dp_shard -1 takes the rest)"
            )
        data = (self.dp_replicate, shard) if self.dp_replicate > 1 else (shard,)
        return (*data, self.tp) if self.tp > 1 else data

    def mesh_dim_names(self) -> tuple[str, ...]:
        """The names of :meth:`mesh_shape`'s dims, in :data:`deepseek.train.mesh_layout.MESH_DIMS` order."""
        data = ("dp_replicate", "dp_shard") if self.dp_replicate > 1 else ("dp_shard",)
        return (*data, "tp") if self.tp > 1 else data

    def setup(self, model: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
        """ZeRO-1: the DDP-wrapped model. ZeRO-2/3: ``model`` itself, sharded in place (its parameters
        become DTensors, so :meth:`setup_optimizer` points the optimizer at them)."""
        if not torch_dist.is_available():
            raise ValueError("train.strategy: 'fsdp' needs torch.distributed, which this torch build lacks")
        if not torch_dist.is_initialized():  # a plain process (no launcher): a world of one, on a group of its own
            init_one_rank_group(device)  # fit() removes it at its end, like a group it joined from torchrun
        shape = self.mesh_shape(torch_dist.get_world_size())
        if self.zero_stage == 1:
            return super().setup(model, dist, device)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

        names = self.mesh_dim_names()
        self._names = {id(p): name for name, p in model.named_parameters()}
        if isinstance(model, FSDPModule):  # a second fit() of a model sharded by the first: as it is
            return model
        on_meta = parameter_names(model) if is_on_meta(model) else None  # before sharding replaces them
        self.mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
        if self.tp > 1:  # the tensor-parallel plan first, then FSDP2 over the data dims (torchtitan's order)
            from deepseek.models.parallelize import check_tp, plan_for_model

            check_tp(model, self.tp)
            plan_for_model(model)(model, self.mesh["tp"], sequence_parallel=self.sequence_parallel,
                                  loss_parallel=self.loss_parallel)  # fmt: skip
        data_mesh = self.mesh[names[:-1]] if self.tp > 1 else self.mesh
        kwargs: dict[str, Any] = {"mesh": data_mesh, "reshard_after_forward": self.reshard_after_forward}
        if self.param_dtype or self.reduce_dtype:
            kwargs["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=DTYPES.get(self.param_dtype or ""), reduce_dtype=DTYPES.get(self.reduce_dtype or "")
            )
        if self.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for block in block_modules(model):
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        if self.comm and self.comm["topology"] == "hybrid":  # a collective: every rank builds the node groups
            from deepseek.distributed.fsdp_comm import install_hierarchical_reduce_scatter
            from deepseek.distributed.topology import Topology

            topology = Topology("hybrid", ring_size=self.comm["ring_size"], tree_depth=self.comm["tree_depth"])
            self.comm_hook = install_hierarchical_reduce_scatter(model, topology)  # timed: comm/* metrics
        if on_meta is not None:  # memory for this rank's shards only, then the model's own init on them
            buffers = {name: b.detach().clone() for name, b in model.named_buffers()}  # real: to_empty drops them
            model.to_empty(device=device)
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(buffers[name])
            # seeded by the shard's index, not the rank: HSDP's replicas of one shard must start equal
            shard = self.mesh.get_local_rank("dp_shard")
            # under tp each tp rank's shard draws its own values too; what is replicated over tp is then synced
            initialise_shards(model, on_meta, shard * self.tp + (self.mesh.get_local_rank("tp") if self.tp > 1 else 0))
            if self.tp > 1:
                _broadcast_tp_replicas(model, self.mesh["tp"])
        return model

    def setup_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
        """ZeRO-1: a ``ZeroRedundancyOptimizer`` of ``optimizer``'s class, groups and hyperparameters.
        ZeRO-2/3: ``optimizer`` itself, its groups pointed at the sharded parameters of the same names.
        An optimizer this set up already (a second ``fit()``) comes back as it is."""
        from torch.distributed.optim import ZeroRedundancyOptimizer

        sharded = dict(model.named_parameters())
        on_sharded = {id(p) for p in sharded.values()}
        if isinstance(optimizer, ZeroRedundancyOptimizer) or (
            self.zero_stage > 1 and all(id(p) in on_sharded for g in optimizer.param_groups for p in g["params"])
        ):
            return optimizer
        if optimizer.state:
            raise ValueError("train.strategy: fsdp needs a fresh optimizer (one that has not stepped yet): "
                             "its state cannot be sharded after the fact; resume from a checkpoint instead")  # fmt: skip
        if self.zero_stage == 1:
            groups = [dict(group) for group in optimizer.param_groups]
            takes = inspect.signature(type(optimizer)).parameters  # defaults may hold more (AdamW's derived flag)
            defaults = {k: v for k, v in optimizer.defaults.items() if k in takes}
            return ZeroRedundancyOptimizer(groups, optimizer_class=type(optimizer), **defaults)
        for group in optimizer.param_groups:
            group["params"] = [sharded[self._names[id(p)]] if id(p) in self._names else p for p in group["params"]]
        return optimizer

    # ------------------------------------------------------------------------------- steps
    def no_sync(self, train_model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        if self.zero_stage == 1:
            return super().no_sync(train_model)
        return _without_gradient_sync(train_model)

    def loss_context(self) -> contextlib.AbstractContextManager[Any]:
        """Where the Trainer computes a micro-batch's loss and runs its backward: under ``loss_parallel``
        torch's ``loss_parallel()``, so cross-entropy runs on the vocab-sharded logits without gathering them."""
        if not self.loss_parallel:
            return contextlib.nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()

    def eval_module(self, model: nn.Module, train_model: nn.Module) -> nn.Module:
        """The model; under ``loss_parallel`` it returns vocab-sharded DTensor logits, so validation runs it
        through :class:`_GatheredOutputs` (plain full logits, which the metrics and the loss take as they are)."""
        return _GatheredOutputs(model) if self.loss_parallel else model

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip to a global 2-norm of ``max_norm`` over all ranks' shards; returns that norm before clipping.

        Under ``tp`` the parameters the plan shards live on the 2-D (data x tp) mesh and the rest (norms,
        positions) on the data mesh only, replicated over tp: DTensor cannot mix meshes in one op, so each mesh's
        norm is reduced on its own (a replicated gradient counts once), then they are combined."""
        by_mesh: dict[Any, list[nn.Parameter]] = {}
        for p in model.parameters():
            if p.grad is not None:
                by_mesh.setdefault(getattr(p.grad, "device_mesh", None), []).append(p)
        norms = []
        for params in by_mesh.values():
            norm = nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
            # a DTensor, partial over the shards: reduce it to the global norm
            norms.append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        if len(norms) < 2:
            norm = norms[0] if norms else torch.zeros(())
        else:
            norm = torch.linalg.vector_norm(torch.stack(norms))
        for params in by_mesh.values():
            nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    # ------------------------------------------------------------------------------- state
    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The full state on rank 0 (``{}`` elsewhere); a collective: every rank calls it."""
        if self.zero_stage == 1:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_full_state_options())
        for name, tensor in state.items():  # a dim that tp split unevenly (gpt2's vocabulary of 50,257) comes
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().nbytes() > tensor.nbytes:
                state[name] = tensor.clone()  # back as a view of a padded buffer, which safetensors refuses
        first: dict[int, str] = {}  # tied parameters share one gathered tensor again: the file stores it once
        for name, tensor in model.state_dict(keep_vars=True).items():
            twin = first.setdefault(id(tensor), name)
            if twin != name and twin in state:
                state[name] = state[twin]
        return state

    def load_model_state_dict(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        """Load a full state that every rank holds; each keeps its shard."""
        if self.zero_stage == 1:
            model.load_state_dict(state, strict=False)
        else:
            from torch.distributed.checkpoint.state_dict import set_model_state_dict

            set_model_state_dict(model, dict(state), options=_full_state_options(loading=True))

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The full optimizer state on rank 0 (``{}`` elsewhere); a collective: every rank calls it."""
        if self.zero_stage == 1:  # a ZeroRedundancyOptimizer
            optimizer.consolidate_state_dict(to=0)  # type: ignore[attr-defined]
            return optimizer.state_dict() if torch_dist.get_rank() == 0 else {}
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_state_options())

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        if self.zero_stage == 1:
            optimizer.load_state_dict(state)
        else:
            from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state, options=_full_state_options(loading=True))

    def teardown(self, train_model: nn.Module) -> nn.Module:
        """ZeRO-1: the module out of DDP. ZeRO-2/3: the model, still sharded (its state comes out through
        :meth:`model_state_dict`)."""
        return super().teardown(train_model)


def _broadcast_tp_replicas(model: nn.Module, tp_mesh: Any) -> None:
    """Give every tp rank the first tp rank's values of the parameters replicated over tp (those the plan does
    not shard, e.g. positions and norms): initialised with a seed per tp rank they would differ, and the
    replicas would then train apart without any error."""
    group = tp_mesh.get_group()
    source = torch_dist.get_global_rank(group, 0)
    with torch.no_grad():
        for param in model.parameters():
            dims = getattr(getattr(param, "device_mesh", None), "mesh_dim_names", None) or ()
            if "tp" in dims and not param.placements[dims.index("tp")].is_replicate():
                continue  # sharded over tp: each rank's own slice
            torch_dist.broadcast(param.to_local() if dims else param, src=source, group=group)


@contextlib.contextmanager
def _without_gradient_sync(module: Any) -> Iterator[None]:
    """On an ``FSDPModule``: gradients accumulate unsharded and unreduced in here; the next synced
    backward reduce-scatters them."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


class _GatheredOutputs(nn.Module):
    """``model`` whose DTensor outputs come back as full plain tensors (validation under ``loss_parallel``:
    logits ``(N, L, vocab)`` gathered from their vocab shards)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.model(*args, **kwargs)
        return out.full_tensor() if hasattr(out, "full_tensor") else out
