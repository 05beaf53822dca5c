"""A hierarchical (node-aware) gradient reduce-scatter for FSDP2, installed with ``set_custom_reduce_scatter``.

FSDP2 (``torch.distributed.fsdp.fully_shard``) reduce-scatters each module's flat gradient buffer ``(p * c,)``
over its shard group of ``p`` ranks: rank ``q`` of the group receives chunk ``q`` (``c`` elements) summed over
all ranks. :class:`HierarchicalReduceScatter` implements torch's ``ReduceScatter`` interface
(``allocate`` and ``__call__``) with two legs over a :class:`~deepseek.distributed.topology.Topology` of
``nodes`` nodes of ``g = ring_size`` ranks:

1. intra-node: the ``p`` chunks are permuted into ``g`` blocks, block ``l`` = the chunks of the ranks
   ``{node * g + l for every node}`` (``(nodes, g, c) -> (g, nodes, c)``), and reduce-scattered over the node:
   the rank of local index ``l`` receives block ``l`` ``(nodes * c,)`` summed over its node;
2. inter-node: block ``l`` is reduce-scattered over the inter-node group of local index ``l`` (one rank per
   node): node ``m``'s rank receives chunk ``m * g + l`` -- its own chunk -- summed over every node.

Each rank ends holding exactly what a flat ``reduce_scatter_tensor`` gives it. Both legs are torch collectives
(``dist.reduce_scatter_single``); what is written here is only the permutation and the choice of groups, which
torch does not offer for process groups (NCCL's own hierarchy is internal; gloo has none).

``op`` (what FSDP2 passes, from ``_get_gradient_divide_factors``, the same on gloo/CPU and NCCL/CUDA):
fp32 and bf16 gradients -> ``AVG``; fp16 -> ``SUM`` (FSDP2 pre/post-divides itself); ``PREMUL_SUM(1/f)`` only
after ``set_gradient_divide_factor(f)`` with ``f`` not the group size. Here ``SUM`` sums in both legs; ``AVG``
sums in both legs and divides the ``(c,)`` output by ``p``; ``PREMUL_SUM`` multiplies the (permuted copy of the)
input by its factor once, then sums. Other ops raise ValueError.

``async_op`` is accepted and ignored: the legs run synchronously and ``__call__`` returns ``None``; FSDP2 calls
the comm without ``async_op`` and does not use its return value (``foreach_reduce``), so it waits for nothing.

Accounting (:meth:`HierarchicalReduceScatter.pop_step_stats`), with ``n`` = bytes of the input and ring
reduce-scatter sending ``(k - 1) / k`` of its buffer per rank of a group of ``k``:

- ``bytes``: this rank's intra leg ``(g - 1) / g * n`` plus its inter leg ``(nodes - 1) / nodes * n / g``
  (= ``(p - 1) / p * n``, the same total as flat);
- ``bytes_inter``: the inter leg alone;
- ``bytes_uncompressed``: a flat ring reduce-scatter, ``(p - 1) / p * n``;
- ``bytes_inter_uncompressed``: the part of that flat ring crossing nodes: ranks in order form the ring, so only
  a node's last rank (local index ``g - 1``) sends to another node, all its ``(p - 1) / p * n`` (0 on one node).

So a node sends only slightly fewer bytes to other nodes (``(nodes-1)/nodes * n`` from its ``g`` ranks together
vs ``(p-1)/p * n`` from its last rank); the gain is that they leave from all ``g`` ranks in parallel (``g`` NICs
instead of one ring link, ``n / g``-sized messages each) in ``nodes - 1`` inter-node steps instead of ``p - 1``.
``seconds``: total time inside the calls (on CUDA measured with events on the current stream, read when popped);
``calls``: the number of calls. Memory stays bounded: pending CUDA events are resolved beyond ``_PENDING_MAX``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import ReduceOp
from torch.distributed.fsdp._fully_shard._fsdp_api import (
    ReduceScatter,  # set_custom_reduce_scatter's type: defined only here
)

from deepseek.distributed.counts import CommCounts
from deepseek.distributed.topology import Topology

_PENDING_MAX = 1024  # CUDA (start, end) event pairs kept before the oldest half is resolved (synchronises)


def _op_kind(op: Any) -> Any:
    """A ``ReduceOp`` object (e.g. ``PREMUL_SUM(f)``) carries its kind in ``.op``; a ``RedOpType`` is the kind."""
    return getattr(op, "op", op)


class HierarchicalReduceScatter(ReduceScatter):
    """FSDP2's reduce-scatter in two legs, inside nodes then across them (see the module docstring).

    ``topology``: the shard group's ranks on nodes. Its ``hybrid`` groups are used (every local index's
    inter-node group); for another mode a hybrid twin with the same ``ring_size`` and group is built.
    Constructing it is then a collective over the default group (``new_group``): every rank must construct it.
    """

    def __init__(self, topology: Topology) -> None:
        if topology.mode != "hybrid":
            topology = Topology("hybrid", topology.ring_size, topology.tree_depth, group=topology.group)
        self.topology = topology.setup()
        self._checked: set[int] = set()  # ids of groups already checked against the topology
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._seconds = 0.0
        self._counts = CommCounts()

    # ---- torch's ReduceScatter interface -----------------------------------------------------------------------
    def allocate(self, size: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A plain buffer (torch's default): FSDP2 asks for the ``(p * c,)`` input and the ``(c,)`` output."""
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 op: Any, async_op: bool = False) -> None:  # fmt: skip
        """``input_tensor`` ``(p * c,)`` -> ``output_tensor`` ``(c,)``: this rank's chunk reduced with ``op``
        over the ``p`` ranks of ``group`` (which must be the topology's). Synchronous; returns ``None``."""
        self._check_group(group)
        topo = self.topology
        p, g, nodes = topo.world, topo.ring_size, topo.nodes
        if input_tensor.numel() != p * output_tensor.numel():
            raise ValueError(
                f"input_tensor: {input_tensor.numel()} elements; allowed: {p} x the output's {output_tensor.numel()}"
            )
        kind = _op_kind(op)
        if kind not in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.PREMUL_SUM):
            raise ValueError(f"op: {kind}; allowed: SUM, AVG or PREMUL_SUM")
        cuda = output_tensor.is_cuda
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        c = output_tensor.numel()
        # block l (contiguous) = the chunks of ranks node * g + l, by node
        blocks = input_tensor.view(nodes, g, c).transpose(0, 1).contiguous().view(-1)
        if kind == ReduceOp.PREMUL_SUM:  # once, on this rank's contribution: the sums that follow are linear
            # out of place when the permutation was the identity (one node, or one rank per node): a view
            blocks = blocks * op.factor if blocks.data_ptr() == input_tensor.data_ptr() else blocks.mul_(op.factor)
        if nodes == 1:
            dist.reduce_scatter_single(output_tensor, blocks, group=topo.intra_group)
        else:
            if g == 1:
                block = blocks
            else:
                block = torch.empty(nodes * c, dtype=blocks.dtype, device=blocks.device)
                dist.reduce_scatter_single(block, blocks, group=topo.intra_group)
            dist.reduce_scatter_single(output_tensor, block, group=topo.inter_group)
        if kind == ReduceOp.AVG:
            output_tensor.div_(p)
        if cuda:
            end.record()
            self._pending.append((start, end))
            if len(self._pending) > _PENDING_MAX:  # bounded even if nobody pops
                self._resolve(len(self._pending) // 2)
        else:
            self._seconds += time.perf_counter() - t0
        self._count(input_tensor.numel() * input_tensor.element_size())
        return None

    # ---- accounting --------------------------------------------------------------------------------------------
    def bytes_sent(self, nbytes: int) -> dict[str, int]:
        """Bytes this rank sends for an input of ``nbytes`` (a multiple of ``p``): ``intra``/``inter`` legs here,
        and ``flat``/``flat_inter`` for a flat ring reduce-scatter (see the module docstring)."""
        topo = self.topology
        p, g, nodes = topo.world, topo.ring_size, topo.nodes
        chunk = nbytes // p
        flat = (p - 1) * chunk
        return {"intra": (g - 1) * nodes * chunk, "inter": (nodes - 1) * chunk, "flat": flat,
                "flat_inter": flat if nodes > 1 and topo.local_rank == g - 1 else 0}  # fmt: skip

    def _count(self, nbytes: int) -> None:
        sent = self.bytes_sent(nbytes)
        self._counts.add(sent, {"intra": sent["flat"] - sent["flat_inter"], "inter": sent["flat_inter"]})

    def _resolve(self, count: int) -> None:
        for start, end in self._pending[:count]:
            end.synchronize()
            self._seconds += start.elapsed_time(end) / 1000.0
        del self._pending[:count]

    def pop_step_stats(self) -> dict[str, float]:
        """Totals since the last pop, then reset: ``seconds``, ``bytes``, ``bytes_uncompressed``, ``bytes_inter``,
        ``bytes_inter_uncompressed``, ``calls``. On CUDA this waits for the timed calls to finish."""
        self._resolve(len(self._pending))
        seconds, self._seconds = self._seconds, 0.0
        return self._counts.pop(seconds)

    def _check_group(self, group: dist.ProcessGroup) -> None:
        if id(group) in self._checked:
            return
        ranks = dist.get_process_group_ranks(group)
        if ranks != self.topology.ranks:
            raise ValueError(
                f"group: ranks {ranks} (size {len(ranks)}); allowed: the topology's ranks "
                f"{self.topology.ranks} in that order (FSDP's shard group must span the topology)"
            )
        self._checked.add(id(group))


def install_hierarchical_reduce_scatter(model: torch.nn.Module, topology: Topology) -> HierarchicalReduceScatter:
    """Make every ``FSDPModule`` in ``model.modules()`` reduce-scatter its gradients through one shared
    :class:`HierarchicalReduceScatter`; call after ``fully_shard`` of all modules, before the first backward.
    A collective (see the class) when the topology is not hybrid or not set up yet."""
    from torch.distributed.fsdp import FSDPModule

    targets = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not targets:
        raise ValueError(f"model: {type(model).__name__} has no FSDPModule; allowed: a model after fully_shard")
    comm = HierarchicalReduceScatter(topology)
    for module in targets:
        module.set_custom_reduce_scatter(comm)
    return comm
