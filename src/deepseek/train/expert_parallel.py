"""The ``expert_parallel`` strategy: MoE experts split over groups of ``ep`` ranks, everything else data-parallel.

Ranks are laid out row-major over a ``("ep_replicate", "ep")`` DeviceMesh (``ep`` innermost): each run of
``ep`` consecutive ranks is an expert group that splits every :class:`deepseek.nn.moe.MoE`'s experts
(:func:`deepseek.nn.expert_parallel.parallelize_experts`: all-to-all dispatch, the aux loss and the
capacity over the global batch), and the ``world / ep`` groups hold replicas of the same experts. Every
rank is a data-parallel rank with its own batch.

Gradients: the non-expert parameters (embeddings, attention, routers, heads) are averaged over the world by
``DistributedDataParallel``, which ignores the expert parameters. An expert's gradient already sums
every rank of its group's tokens' contributions; a hook after its accumulation sums it over the replicas
and divides it by the world size, so every update equals one process's on the global batch (DDP's mean).
Gradient clipping takes the global norm over every expert. In a plain process (no launcher) or a world of
one, the model trains whole, as on one device.

State for checkpoints and ``final/`` is the whole model: every rank's experts gathered to rank 0 under
their original names (a collective: every rank calls it; the others get ``{}``); loading keeps this rank's
experts. The optimizer state likewise, keyed by parameter name. After ``fit()`` the model stays split:
its forward is a collective of the expert group (validation runs on every rank, as training does).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from deepseek.nn.expert_parallel import parallelize_experts
from deepseek.nn.moe import MoE
from deepseek.registry import register_strategy
from deepseek.train.distributed import DistInfo
from deepseek.train.strategy import DDP


@register_strategy("expert_parallel")
class ExpertParallelStrategy(DDP):
    """Experts over groups of ``ep`` ranks, replicated across groups; the rest data-parallel (DDP)."""

    collective_state_dict = True  # rank 0 gathers every expert for checkpoints and final/
    # checkpoint.sharded: true is allowed: each rank's experts are tensors of its own under their own names, so
    # DCP writes each rank's part (replicated tensors once) and reads it back at any layout (ep 2 -> 1 included)
    holds_own_parameters = True

    def __init__(self, ep: int = 1) -> None:
        if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
            raise ValueError(f"train.strategy: expert_parallel ep: {ep!r} is not allowed; use an integer >= 1 "
                             "that divides the world size and every MoE layer's number of experts")  # fmt: skip
        super().__init__()
        self.ep = ep
        self.mesh: Any = None  # the ("ep_replicate", "ep") DeviceMesh; None in a world of one
        self._expert_ids: set[int] = set()  # ids of this rank's expert parameters
        self._full_keys: list[str] = []  # the whole model's state-dict names, in order
        self._expert_prefixes: tuple[str, ...] = ()  # "<moe>.experts." of every MoE: the split part of the state
        self._syncing = True  # False inside no_sync: expert gradients accumulate unreduced

    def mesh_shape(self, world_size: int) -> tuple[int, int]:
        """``(world_size / ep, ep)``; ValueError when ``ep`` does not divide the world."""
        if world_size % self.ep:
            raise ValueError(f"train.strategy: expert_parallel ep {self.ep} does not divide the world size "
                             f"{world_size}; use an ep that does (groups of ep ranks split the experts)")  # fmt: skip
        return world_size // self.ep, self.ep

    # ------------------------------------------------------------------------------- set-up
    def setup(self, model: nn.Module, dist: DistInfo, device: torch.device) -> nn.Module:
        """The DDP-wrapped model, its experts split over the expert group; ``model`` itself in a world of one."""
        if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
            return model  # a world of one: ep degrades to 1, every expert here
        from torch.distributed.device_mesh import init_device_mesh

        if any(isinstance(m, MoE) and m.expert_parallel is not None for m in model.modules()):
            raise ValueError("train.strategy: expert_parallel: the model's experts are already split (a second "
                             "fit() of the same model); build the model anew and resume from a checkpoint")  # fmt: skip
        self._full_keys = list(model.state_dict().keys())
        self._expert_prefixes = tuple(f"{name}.experts." if name else "experts."
                                      for name, m in model.named_modules() if isinstance(m, MoE))  # fmt: skip
        self.mesh = init_device_mesh(
            device.type, self.mesh_shape(torch_dist.get_world_size()), mesh_dim_names=("ep_replicate", "ep")
        )
        kept = parallelize_experts(model, expert_group=self.mesh.get_group("ep"))
        params = dict(model.named_parameters())
        self._expert_ids = {id(params[name]) for name in kept}
        for name in kept:
            params[name].register_post_accumulate_grad_hook(self._reduce_expert_grad)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, kept)
        return super().setup(model, dist, device)

    def setup_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.optim.Optimizer:
        """``optimizer`` with the experts this rank does not hold taken out of its groups."""
        held = {id(p) for p in model.parameters()}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) in held]
        return optimizer

    def _reduce_expert_grad(self, param: torch.Tensor) -> None:
        """Sum over the expert replicas, then divide by the world (DDP's mean; see the module docstring)."""
        if not self._syncing or param.grad is None:
            return
        if self.mesh.size(0) > 1:
            torch_dist.all_reduce(param.grad, group=self.mesh.get_group("ep_replicate"))
        param.grad.div_(self.mesh.size())

    # ------------------------------------------------------------------------------- steps
    @contextlib.contextmanager
    def no_sync(self, train_model: nn.Module) -> Iterator[None]:
        """DDP's ``no_sync``, and no expert-gradient reduction: the window's last micro-step does both."""
        self._syncing = False
        try:
            with super().no_sync(train_model):
                yield
        finally:
            self._syncing = True

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip to a global 2-norm of ``max_norm`` over every expert of every rank; returns the norm before clipping."""
        params = [p for p in model.parameters() if p.grad is not None]
        if self.mesh is None:
            return nn.utils.clip_grad_norm_(params, max_norm)
        squares = [sum((p.grad.float().pow(2).sum() for p in params if (id(p) in self._expert_ids) == expert),
                       torch.zeros(())) for expert in (False, True)]  # fmt: skip
        torch_dist.all_reduce(squares[1], group=self.mesh.get_group("ep"))  # replicas hold the same experts
        norm = (squares[0] + squares[1]).sqrt()
        nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    # ------------------------------------------------------------------------------- state
    def _gather_to_main(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Every expert group's ``mine`` from the first replica group's ranks, on rank 0 (``[]`` elsewhere)."""
        first_replica = self.mesh.get_local_rank("ep_replicate") == 0
        gathered: list[Any] = [None] * torch_dist.get_world_size() if torch_dist.get_rank() == 0 else []
        torch_dist.gather_object(mine if first_replica else {}, gathered if gathered else None, dst=0)
        return gathered

    def model_state_dict(self, model: nn.Module) -> dict[str, Any]:
        """The whole model's state on rank 0; a collective: every rank calls it. The other ranks get every
        name too (other ranks' experts as placeholders): the checkpoint loader takes the names to expect from
        here, and a whole-model file holds every expert."""
        if self.mesh is None:
            return model.state_dict()
        own = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        experts = {k: v for k, v in own.items() if k.startswith(self._expert_prefixes)}
        gathered = self._gather_to_main(experts)
        if torch_dist.get_rank() != 0:
            return {k: own[k] if k in own else torch.zeros(1) for k in self._full_keys}
        merged = {**own, **{k: v for part in gathered for k, v in part.items()}}
        return {k: merged[k] for k in self._full_keys}

    def load_model_state_dict(self, model: nn.Module, state: Mapping[str, Any]) -> None:
        """Load the whole model's state (every rank holds it); each rank keeps its own experts."""
        own = model.state_dict().keys()
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The whole optimizer state on rank 0, keyed by parameter name (``{}`` elsewhere); a collective."""
        if self.mesh is None:
            return optimizer.state_dict()
        names = {id(p): name for name, p in model.named_parameters()}
        state = {names[id(p)]: {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in s.items()}
                 for p, s in optimizer.state.items()}  # fmt: skip
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]  # fmt: skip
        experts = {"state": {k: v for k, v in state.items() if k.startswith(self._expert_prefixes)},
                   "params": [[n for n in g["params"] if n.startswith(self._expert_prefixes)] for g in groups]}  # fmt: skip
        gathered = self._gather_to_main(experts)
        if torch_dist.get_rank() != 0:
            return {}
        for part in gathered:
            if part:
                state.update(part["state"])
                for group, extra in zip(groups, part["params"], strict=True):
                    group["params"] += [n for n in extra if n not in group["params"]]
        return {"state": state, "param_groups": groups}

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        """Load a name-keyed whole optimizer state (every rank holds it): this rank's parameters' part."""
        if self.mesh is None:
            optimizer.load_state_dict(state)
            return
        names = {id(p): name for name, p in model.named_parameters()}
        index, groups = 0, []
        by_index: dict[int, Any] = {}
        for mine, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
            ids = []
            for p in mine["params"]:
                if names[id(p)] in state["state"]:
                    by_index[index] = state["state"][names[id(p)]]
                ids.append(index)
                index += 1
            groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": ids})
        optimizer.load_state_dict({"state": by_index, "param_groups": groups})
