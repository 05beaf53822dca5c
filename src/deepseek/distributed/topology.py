"""How ranks map to nodes, the process groups that follows from it, and an all-reduce that follows a mode.

``Topology(mode, ring_size, tree_depth)``:

- ``ring_size`` ranks form one node (its *intra-node* group); rank ``r`` of the group sits on node
  ``r // ring_size`` with local index ``r % ring_size``. ``None`` takes ``LOCAL_WORLD_SIZE`` from the
  environment (torchrun sets it), else the whole world is one node. Several processes on one machine can stand
  for several nodes by giving ``ring_size`` explicitly (4 processes, ``ring_size=2``: 2 nodes of 2).
- the *inter-node* group of local index ``j`` holds the ranks with local index ``j`` on every node (one rank
  per node); the one of index 0 is the node leaders' group.
- ``tree_depth`` is the depth of the tree across nodes. Its fan-out is the smallest ``k`` for which a ``k``-ary
  tree of that depth (``1 + k + ... + k**depth`` places) holds every node; nodes sit in heap order (node ``i``'s
  parent is ``(i - 1) // k``). Depth 1 is a star around node 0; depth 2 with 2 nodes is a chain.

Modes of :meth:`Topology.all_reduce` (a sum, in place):

- ``ring``: one flat ``dist.all_reduce`` over the whole group (gloo/NCCL pick their ring); no subgroups.
- ``tree``: reduce inside each node to its leader, all-reduce among the leaders up and down the tree (each
  node adds its children's sums and sends to its parent; then the root's total travels back down),
  broadcast inside each node.
- ``hybrid`` ("ring inside, tree across", document 004): reduce-scatter inside each node (the buffer padded to a
  multiple of ``ring_size``), all-reduce of each rank's shard across nodes over the inter-node group of its
  local index along the same tree, all-gather inside each node. Every rank sends only ``1/ring_size`` of the
  buffer across nodes, and the ``ring_size`` inter-node groups work on disjoint shards.

Written by hand because torch has no hierarchical all-reduce for process groups (NCCL's tree lives inside
NCCL and gloo has none); the tree across nodes uses torch's point-to-point ``send``/``recv``, the legs inside a
node torch's collectives. The tree legs are blocking calls, so :meth:`all_reduce` returns when the sum is done.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist

MODES = ("ring", "tree", "hybrid")


def tree_fanout(nodes: int, depth: int) -> int:
    """Smallest ``k >= 1`` such that a ``k``-ary tree of ``depth`` levels below its root holds ``nodes`` places."""
    k = 1
    while sum(k**i for i in range(depth + 1)) < nodes:
        k += 1
    return k


class Topology:
    """Ranks on nodes, their process groups, and an all-reduce following ``mode`` (see the module docstring).

    ``group``: the ranks this topology spans (default: the world). :meth:`setup` must run before
    :meth:`all_reduce` in tree and hybrid modes.
    """

    def __init__(self, mode: str = "ring", ring_size: int | None = None, tree_depth: int = 1, *,
                 group: dist.ProcessGroup | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r}; allowed: {', '.join(MODES)}")
        if isinstance(tree_depth, bool) or not isinstance(tree_depth, int) or tree_depth < 1:
            raise ValueError(f"tree_depth: {tree_depth!r}; allowed: an integer >= 1")
        if not dist.is_initialized():
            raise RuntimeError("Topology needs an initialised process group: call torch.distributed.init_process_group")
        self.mode = mode
        self.tree_depth = tree_depth
        self.group = group if group is not None else dist.group.WORLD
        self.ranks: list[int] = dist.get_process_group_ranks(self.group)  # global ranks, in group order
        self.rank = dist.get_rank(self.group)
        self.world = len(self.ranks)
        if ring_size is None:
            ring_size = _local_world_size(self.world)
        if isinstance(ring_size, bool) or not isinstance(ring_size, int) or ring_size < 1 or self.world % ring_size:
            raise ValueError(f"ring_size: {ring_size!r} with a world of {self.world}; allowed: a positive divisor "
                             f"of {self.world} (ranks per node)")
        self.ring_size = ring_size
        self.nodes = self.world // ring_size
        self.node = self.rank // ring_size
        self.local_rank = self.rank % ring_size
        self.fanout = tree_fanout(self.nodes, tree_depth)
        self.intra_group: dist.ProcessGroup | None = None
        self.inter_group: dist.ProcessGroup | None = None  # this rank's inter-node group (its local index)
        self._ready = False

    # ---- structure -------------------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.local_rank == 0

    def node_ranks(self, node: int) -> list[int]:
        """Global ranks of ``node``'s ranks, by local index."""
        return self.ranks[node * self.ring_size:(node + 1) * self.ring_size]

    def inter_ranks(self, local_index: int) -> list[int]:
        """Global ranks with local index ``local_index``, by node (index 0: the leaders)."""
        return [self.ranks[n * self.ring_size + local_index] for n in range(self.nodes)]

    def describe(self) -> str:
        return (f"{self.mode}: {self.world} ranks = {self.nodes} nodes x {self.ring_size}; tree depth "
                f"{self.tree_depth}, fan-out {self.fanout}; rank {self.rank} on node {self.node}, local {self.local_rank}")

    def setup(self) -> Topology:
        """Create the intra- and inter-node groups this mode needs. A collective over the *default* group (torch's
        ``new_group`` rule): every rank calls it, in the same order. Idempotent."""
        if self._ready:
            return self
        if self.mode != "ring":
            for node in range(self.nodes):  # every rank creates every group, in the same order
                g = dist.new_group(self.node_ranks(node))
                if node == self.node:
                    self.intra_group = g
            for j in range(self.ring_size if self.mode == "hybrid" else 1):
                g = dist.new_group(self.inter_ranks(j))
                if j == self.local_rank:
                    self.inter_group = g
        self._ready = True
        return self

    # ---- the all-reduce and its legs ---------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` (any shape, contiguous) over the group's ranks in place, following the mode; returns it."""
        if self.mode == "ring":
            dist.all_reduce(tensor, group=self.group)
            return tensor
        self._check_ready()
        flat = tensor.view(-1)
        if self.mode == "tree":
            self.reduce_to_leader(flat)
            if self.is_leader:
                self.tree_all_reduce(flat)
            self.broadcast_from_leader(flat)
            return tensor
        shard, padded = self.reduce_scatter_intra(flat)
        self.tree_all_reduce(shard)
        self.all_gather_intra(shard, padded, flat)
        return tensor

    def reduce_to_leader(self, flat: torch.Tensor) -> None:
        """Sum over the node into the leader's ``flat`` (the others' ``flat`` is left undefined)."""
        self._check_ready()
        if self.ring_size > 1:
            dist.reduce(flat, dst=self.node_ranks(self.node)[0], group=self.intra_group)

    def broadcast_from_leader(self, flat: torch.Tensor) -> None:
        self._check_ready()
        if self.ring_size > 1:
            dist.broadcast(flat, src=self.node_ranks(self.node)[0], group=self.intra_group)

    def shard_numel(self, numel: int) -> int:
        """Elements of each rank's shard in hybrid mode: ``ceil(numel / ring_size)``."""
        return -(-numel // self.ring_size)

    def reduce_scatter_intra(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hybrid's first leg. ``flat`` ``(n,)`` -> ``(shard (s,), padded (s * ring_size,))``: the shard of the
        node's sum at this rank's local index; ``padded`` is the work buffer :meth:`all_gather_intra` fills."""
        self._check_ready()
        s = self.shard_numel(flat.numel())
        padded = torch.zeros(s * self.ring_size, dtype=flat.dtype, device=flat.device)
        padded[:flat.numel()].copy_(flat)
        if self.ring_size == 1:
            return padded, padded
        shard = torch.empty(s, dtype=flat.dtype, device=flat.device)
        dist.reduce_scatter_single(shard, padded, group=self.intra_group)
        return shard, padded

    def all_gather_intra(self, shard: torch.Tensor, padded: torch.Tensor, flat: torch.Tensor) -> None:
        """Hybrid's last leg: gather every local index's ``shard`` into ``padded`` and copy the first ``n`` into
        ``flat`` ``(n,)`` (``shard``'s dtype may differ from ``flat``'s: it is cast)."""
        self._check_ready()
        if self.ring_size > 1:
            if shard.dtype != padded.dtype:
                padded = torch.empty(padded.numel(), dtype=shard.dtype, device=shard.device)
            dist.all_gather_single(padded, shard.contiguous(), group=self.intra_group)
        else:
            padded = shard
        flat.copy_(padded[:flat.numel()])

    def tree_all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` in place over this rank's inter-node group (one rank per node) along the tree of
        ``tree_depth``: up (children's partial sums added in child order, then sent to the parent), then down."""
        self._check_ready()
        if self.nodes == 1:
            return
        peers, me, k = self.inter_ranks(self.local_rank), self.node, self.fanout
        children = [c for c in range(k * me + 1, k * me + k + 1) if c < self.nodes]
        incoming = torch.empty_like(tensor)
        for c in children:
            dist.recv(incoming, src=peers[c])
            tensor.add_(incoming)
        if me > 0:
            dist.send(tensor, dst=peers[(me - 1) // k])
            dist.recv(tensor, src=peers[(me - 1) // k])
        for c in children:
            dist.send(tensor, dst=peers[c])

    def _check_ready(self) -> None:
        if not self._ready and self.mode != "ring":
            raise RuntimeError(f"Topology({self.mode!r}).setup() must run on every rank before its collectives")

    # ---- accounting ---------------------------------------------------------------------------------------------
    def tree_children(self, node: int) -> int:
        return sum(1 for c in range(self.fanout * node + 1, self.fanout * node + self.fanout + 1) if c < self.nodes)

    def tree_bytes(self, nbytes: int) -> int:
        """Bytes this rank's node position sends in :meth:`tree_all_reduce` of ``nbytes``: up once (unless
        root), down once per child."""
        if self.nodes == 1:
            return 0
        return (nbytes if self.node > 0 else 0) + self.tree_children(self.node) * nbytes

    def bytes_sent(self, nbytes: int, element_size: int = 4) -> dict[str, int]:
        """Bytes this rank sends in one :meth:`all_reduce` of ``nbytes`` (elements of ``element_size`` bytes),
        split into ``intra`` (inside its node) and ``inter`` (to other nodes). Accounting per leg: ring
        all-reduce ``2 (p-1)/p n`` (counted inter on a node's last rank, whose ring successor is on the next
        node); reduce to the leader ``n`` per non-leader; broadcast ``(ring_size-1) n`` from the leader;
        reduce-scatter and all-gather ``(ring_size-1) s`` each on the padded shard ``s``; tree: see
        :meth:`tree_bytes`."""
        r, out = self.ring_size, {"intra": 0, "inter": 0}
        if self.mode == "ring":
            sent = math.ceil(2 * (self.world - 1) * nbytes / self.world) if self.world > 1 else 0
            across = self.nodes > 1 and self.local_rank == r - 1
            out["inter" if across else "intra"] = sent
        elif self.mode == "tree":
            out["intra"] = (0 if self.is_leader else nbytes) + ((r - 1) * nbytes if self.is_leader else 0)
            out["inter"] = self.tree_bytes(nbytes) if self.is_leader else 0
        else:
            shard = self.shard_numel(nbytes // element_size) * element_size
            out["intra"] = 2 * (r - 1) * shard
            out["inter"] = self.tree_bytes(shard)
        return out


def _local_world_size(world: int) -> int:
    value = os.environ.get("LOCAL_WORLD_SIZE")
    if value is None:
        return world  # one node
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"LOCAL_WORLD_SIZE: {value!r}; allowed: a positive integer (ranks per node)") from None
