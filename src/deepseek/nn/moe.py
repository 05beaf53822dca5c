"""Mixture of experts with sparse top-k dispatch (Switch Transformer / GShard routing).

Unlike the reference document's sketch, which runs every expert on every token and takes top-k over
expert outputs, each token here is routed by the softmax of the router's logits to its top-k experts
and only those experts run on it. Each expert takes at most ``capacity = ceil(capacity_factor *
tokens * top_k / num_experts)`` tokens; assignments past it are dropped (first choices are served
before second choices) and counted. After every forward, ``aux_loss`` holds the Switch load-balancing
loss ``aux_loss_weight * E * sum_e f_e * P_e`` (``f_e``: share of tokens whose first choice is
``e``; ``P_e``: mean router probability of ``e``); ds.Trainer adds the ``aux_loss`` of every module
that has one to the training loss.

Routing (:meth:`MoE.route`) is separate from running the experts (:meth:`MoE.run_experts`): expert
parallelism (:mod:`deepseek.nn.expert_parallel`) replaces the latter with an all-to-all exchange and takes
the capacity and the aux loss over the global batch, without touching the router.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class FeedForward(nn.Module):
    """``Linear(d_model, d_hidden) -> GELU -> Linear(d_hidden, d_model)``: the default expert."""

    def __init__(self, d_model: int, d_hidden: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d_model, d_hidden), nn.Linear(d_hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


@dataclass
class Dispatch:
    """Kept assignments of tokens to experts: parallel ``(A,)`` tensors, plus routing statistics."""

    expert: torch.Tensor  # expert index of each kept assignment
    token: torch.Tensor  # token index (into the flattened tokens) of each kept assignment
    gate: torch.Tensor  # combine weight of each kept assignment
    dropped: int  # assignments dropped for capacity
    capacity: int
    tokens_per_expert: torch.Tensor  # (E,) kept assignments per expert


class MoE(nn.Module):
    """``(..., d_model) -> (..., d_model)``. ``expert`` builds one expert (default: a GELU feed-forward of
    width ``d_hidden``, ``4 * d_model`` if unset). Dropped assignments contribute zero (a surrounding
    residual connection carries the token through)."""

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int = 2,
        capacity_factor: float = 1.25,
        expert: Callable[[], nn.Module] | None = None,
        d_hidden: int | None = None,
        aux_loss_weight: float = 0.01,
        normalize_gates: bool = True,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        self.d_model, self.num_experts, self.top_k = d_model, num_experts, top_k
        self.capacity_factor, self.aux_loss_weight, self.normalize_gates = (
            capacity_factor,
            aux_loss_weight,
            normalize_gates,
        )
        self.router = nn.Linear(d_model, num_experts, bias=False)
        make = expert or (lambda: FeedForward(d_model, d_hidden or 4 * d_model))
        self.experts = nn.ModuleList([make() for _ in range(num_experts)])
        self.aux_loss: torch.Tensor | None = None
        self.last_dispatch: Dispatch | None = None
        # An ExpertParallel (typed Any: that module imports this one) set by deepseek.nn.expert_parallel's
        # parallelize_experts: experts split over ranks, all-to-all dispatch, routing statistics global.
        self.expert_parallel: Any = None

    def capacity(self, tokens: int) -> int:
        return max(1, math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts))

    def route(self, tokens: torch.Tensor) -> tuple[Dispatch, torch.Tensor]:
        """Top-k routing of ``(T, d_model)`` tokens; returns the dispatch and the router probabilities ``(T, E)``."""
        probs = F.softmax(self.router(tokens).float(), dim=-1)
        gate, expert = probs.topk(self.top_k, dim=-1)  # (T, k)
        if self.normalize_gates:
            gate = gate / gate.sum(-1, keepdim=True)
        t = tokens.shape[0]
        flat_expert = expert.t().reshape(-1)  # slot-major: every token's first choice before any second choice
        flat_token = torch.arange(t, device=tokens.device).repeat(self.top_k)
        flat_gate = gate.t().reshape(-1)
        one_hot = F.one_hot(flat_expert, self.num_experts)
        position = (one_hot.cumsum(0) - 1).gather(1, flat_expert[:, None]).squeeze(1)
        if self.expert_parallel is None:
            cap = self.capacity(t)
        else:  # capacity and queue positions of one process on the global batch (every rank's tokens)
            slot_counts = one_hot.view(self.top_k, t, self.num_experts).sum(1)  # (k, E); t may be 0 (all padding)
            offset, cap = self.expert_parallel.global_queue(slot_counts, self.capacity)
            slot = torch.arange(self.top_k, device=tokens.device).repeat_interleave(t)
            position = position + offset[slot, flat_expert]
        keep = position < cap
        dispatch = Dispatch(
            expert=flat_expert[keep], token=flat_token[keep], gate=flat_gate[keep].to(tokens.dtype),
            dropped=int((~keep).sum()), capacity=cap, tokens_per_expert=one_hot[keep].sum(0),
        )  # fmt: skip
        return dispatch, probs

    def run_experts(self, tokens: torch.Tensor, dispatch: Dispatch) -> torch.Tensor:
        """Each expert on its assigned tokens only; outputs weighted by the gates and summed per token.

        An expert with no tokens still runs on an empty ``(0, d_model)`` batch: it stays in the autograd
        graph and gets a zero gradient, as DDP's default ``find_unused_parameters=False`` requires."""
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            mine = dispatch.expert == e
            tok = dispatch.token[mine]
            out.index_add_(0, tok, (expert(tokens[tok]) * dispatch.gate[mine, None]).to(out.dtype))
        return out

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (..., d_model)``; ``token_mask (...)``, True for real tokens: padding is neither routed nor
        counted in the capacity or the aux loss, and its output is zero."""
        tokens = x.reshape(-1, self.d_model)
        real = None if token_mask is None else token_mask.reshape(-1).bool().nonzero().squeeze(1)
        routed = tokens if real is None else tokens[real]
        dispatch, probs = self.route(routed)
        self.aux_loss = self.load_balancing_loss(probs)
        self.last_dispatch = dispatch
        if self.expert_parallel is None:
            out = self.run_experts(routed, dispatch)
        else:
            out = self.expert_parallel.run_experts(self, routed, dispatch)
        if real is not None:
            out = out.new_zeros(tokens.shape[0], out.shape[1]).index_copy(0, real, out)
        return out.reshape(x.shape)

    def load_balancing_loss(self, probs: torch.Tensor) -> torch.Tensor:
        """The Switch aux loss (a scalar) of router probabilities ``probs (T, E)``; under expert parallelism
        over the global batch: the per-expert sums and the token count are summed over the data group."""
        first_choice = F.one_hot(probs.argmax(-1), self.num_experts).float()
        if self.expert_parallel is None:
            return self.aux_loss_weight * self.num_experts * (first_choice.mean(0) * probs.mean(0)).sum()
        count = probs.new_full((1,), probs.shape[0])
        stats = self.expert_parallel.load_balance_stats(torch.cat([probs.sum(0), first_choice.sum(0), count]))
        prob_mean, first_share = stats[: self.num_experts] / stats[-1], stats[self.num_experts : -1] / stats[-1]
        return self.aux_loss_weight * self.num_experts * (first_share * prob_mean).sum()

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}, capacity_factor={self.capacity_factor}"


def aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Sum of the ``aux_loss`` tensors the model's modules set in their last forward (None if none did)."""
    losses = [m.aux_loss for m in model.modules() if isinstance(getattr(m, "aux_loss", None), torch.Tensor)]
    return torch.stack([loss.float() for loss in losses]).sum() if losses else None
