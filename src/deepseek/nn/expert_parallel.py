"""Expert parallelism for :class:`deepseek.nn.moe.MoE`: experts split over a group of ranks, all-to-all dispatch.

With ``ep`` ranks in an expert group, each rank keeps ``num_experts / ep`` experts (rank ``i`` of the group
the ``i``-th contiguous block) under their original names (``experts.2.*`` on rank 1 of 2 with 4 experts:
``moe.experts`` becomes an ``nn.ModuleDict`` keyed by the expert index). Every rank routes its own tokens
with its replica of the router, sends each kept assignment's token to the rank that owns its expert
(``all_to_all_single``), runs its experts on what it received, sends the results back and combines them
with the gates as one process does.

Routing statistics are taken over the *data group* (every rank whose tokens make the global batch; the
default group unless given): the load-balancing aux loss is that of one process on the global batch, and
so are the capacity and the queue position of each assignment (first choices of every rank's tokens are
served before any second choice, rank 0's tokens before rank 1's), so the kept and dropped assignments
are those of one process on the ranks' batches concatenated in rank order.

Gradients: an expert's gradient sums the contributions of every rank's tokens that reached it, and the
aux loss's all-reduce sums its backward too, so each rank's gradient is ``world`` times its share of the
global loss's: a data-parallel average over the data group (as DDP does) gives one process's gradient,
with expert gradients divided by the data group's size and summed over expert replicas
(``deepseek.train.expert_parallel`` does this).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from deepseek.nn.moe import Dispatch, MoE


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows ``(sum(send), ...) -> (sum(recv), ...)``; its backward sends the gradients back."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, recv: list[int], send: list[int], group: Any) -> torch.Tensor:
        ctx.recv, ctx.send, ctx.group = recv, send, group
        return _exchange(rows, recv, send, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        return _exchange(grad, ctx.send, ctx.recv, ctx.group), None, None, None


def _exchange(rows: torch.Tensor, recv: list[int], send: list[int], group: Any) -> torch.Tensor:
    out = rows.new_empty((sum(recv), *rows.shape[1:]))
    dist.all_to_all_single(out, rows.contiguous(), recv, send, group=group)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group; the backward sums the gradients (every rank's output depends on every input)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ExpertParallel:
    """One MoE's place in the expert group (``expert_group``) and the data group (``data_group``; None: the
    default group). Holds no parameters: :class:`MoE` calls it from ``route`` and ``forward``."""

    def __init__(self, num_experts: int, expert_group: Any, data_group: Any = None) -> None:
        self.expert_group, self.data_group = expert_group, data_group
        self.ep, self.ep_rank = dist.get_world_size(expert_group), dist.get_rank(expert_group)
        self.per_rank = num_experts // self.ep
        self.local = list(range(self.ep_rank * self.per_rank, (self.ep_rank + 1) * self.per_rank))

    def global_queue(self, slot_counts: torch.Tensor, capacity: Any) -> tuple[torch.Tensor, int]:
        """``slot_counts (k, E)``: this rank's assignments per (choice slot, expert). Returns the offset
        ``(k, E)`` to add to each local queue position to get its position in one process's slot-major
        queue over the global batch (ranks in order), and the global capacity ``capacity(global tokens)``."""
        world, rank = dist.get_world_size(self.data_group), dist.get_rank(self.data_group)
        gathered = [torch.empty_like(slot_counts) for _ in range(world)]
        dist.all_gather(gathered, slot_counts.contiguous(), group=self.data_group)
        every = torch.stack(gathered)  # (W, k, E)
        others = every.sum(0) - every[rank]  # other ranks' assignments per (slot, expert)
        earlier_slots = others.cumsum(0) - others  # theirs in the slots before (ours there: the local cumsum)
        earlier_ranks = every[:rank].sum(0)  # lower ranks' in the same slot
        return earlier_slots + earlier_ranks, capacity(int(every[:, 0].sum()))

    def load_balance_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Sum ``stats`` over the data group, differentiably (the aux loss's probabilities need gradients)."""
        return _AllReduceSum.apply(stats, self.data_group)

    def run_experts(self, moe: MoE, tokens: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
        """``tokens (T, d_model)`` -> ``(T, d_model)``: each kept assignment's token goes to its expert's
        rank and its output comes back, weighted by its gate and summed per token."""
        order = torch.argsort(dispatch.expert, stable=True)  # grouped by expert, hence by owning rank
        expert, token, gate = dispatch.expert[order], dispatch.token[order], dispatch.gate[order]
        per_expert = torch.bincount(expert, minlength=moe.num_experts)  # (E,)
        incoming = torch.empty_like(per_expert)  # (ep * per_rank,): per source rank, per local expert
        dist.all_to_all_single(incoming, per_expert, group=self.expert_group)
        send = per_expert.view(self.ep, self.per_rank).sum(1).tolist()
        recv = incoming.view(self.ep, self.per_rank).sum(1).tolist()
        inbound = _AllToAll.apply(tokens[token], recv, send, self.expert_group)  # (sum(recv), d_model)
        local_index = torch.arange(self.per_rank, device=tokens.device).repeat(self.ep)
        which = local_index.repeat_interleave(incoming)  # local expert of each inbound row
        results = inbound.new_zeros(inbound.shape)
        for j, e in enumerate(self.local):  # an expert with no rows still runs: it stays in the graph
            rows = (which == j).nonzero().squeeze(1)
            results = results.index_copy(0, rows, moe.experts[str(e)](inbound[rows]).to(results.dtype))
        outbound = _AllToAll.apply(results, send, recv, self.expert_group)  # (A, d_model), in `order`
        return torch.zeros_like(tokens).index_add(0, token, (outbound * gate[:, None]).to(tokens.dtype))


def check_expert_degree(moe: MoE, ep: int) -> None:
    """ValueError unless ``ep`` divides the MoE's number of experts."""
    if ep < 1 or moe.num_experts % ep:
        raise ValueError(f"expert parallel: num_experts {moe.num_experts} does not divide by ep {ep}; "
                         "use an ep that divides every MoE layer's number of experts")  # fmt: skip


def parallelize_experts(model: nn.Module, expert_group: Any, data_group: Any = None) -> list[str]:
    """Split the experts of every :class:`MoE` in ``model`` over ``expert_group`` (in place); routing
    statistics over ``data_group`` (None: the default group). Returns the names of the expert parameters
    this rank keeps, sorted."""
    ep = dist.get_world_size(expert_group)
    moes = [(name, m) for name, m in model.named_modules() if isinstance(m, MoE)]
    for _, moe in moes:
        check_expert_degree(moe, ep)
    kept: list[str] = []
    for name, moe in moes:
        plan = ExpertParallel(moe.num_experts, expert_group, data_group)
        if moe.expert_parallel is None:  # a second call (a second fit()) keeps the first split
            moe.experts = nn.ModuleDict({str(e): moe.experts[e] for e in plan.local})
            moe.expert_parallel = plan
        prefix = f"{name}.experts." if name else "experts."
        kept += [prefix + p_name for p_name, _ in moe.experts.named_parameters()]
    return sorted(kept)
