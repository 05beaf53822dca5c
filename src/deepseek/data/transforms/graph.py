"""Graph transforms on :class:`deepseek.data.graph.Graph` samples (or collated batches)."""

from __future__ import annotations

import torch

from deepseek.data.graph import Graph
from deepseek.data.transforms.base import Transform, transform


@transform("EdgeDropout", "graph")
class EdgeDropout(Transform):
    """Drop each edge with probability ``p``: ``E -> E'`` edges; nodes unchanged."""

    preserves_shape = False

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, g: Graph, generator: torch.Generator | None = None) -> Graph:
        keep = (torch.rand(g.num_edges, generator=generator) >= self.p).to(g.edge_index.device)
        weight = g.edge_weight[keep] if g.edge_weight is not None else None
        return g.replace(edge_index=g.edge_index[:, keep], edge_weight=weight)


@transform("NodeFeatureMask", "graph")
class NodeFeatureMask(Transform):
    """Zero each feature column with probability ``p`` for all nodes (GraphCL attribute masking). Same shape."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, g: Graph, generator: torch.Generator | None = None) -> Graph:
        keep = (torch.rand(g.x.shape[1], generator=generator) >= self.p).to(g.x.device, g.x.dtype)
        return g.replace(x=g.x * keep)


@transform("AddSelfLoops", "graph")
class AddSelfLoops(Transform):
    """Add an edge ``i -> i`` (weight ``fill``) for every node lacking one: ``E -> E + missing``. Deterministic."""

    random = False

    preserves_shape = False

    def __init__(self, fill: float = 1.0) -> None:
        self.fill = fill

    def __call__(self, g: Graph, generator: torch.Generator | None = None) -> Graph:
        has = torch.zeros(g.num_nodes, dtype=torch.bool, device=g.edge_index.device)
        src, dst = g.edge_index
        has[src[src == dst]] = True
        missing = (~has).nonzero().flatten()
        loops = torch.stack([missing, missing])
        weight = None
        if g.edge_weight is not None:
            weight = torch.cat(
                [
                    g.edge_weight,
                    torch.full((missing.numel(),), self.fill, dtype=g.edge_weight.dtype, device=g.edge_weight.device),
                ]
            )
        return g.replace(edge_index=torch.cat([g.edge_index, loops], dim=1), edge_weight=weight)


@transform("NormalizeAdjacency", "graph")
class NormalizeAdjacency(Transform):
    """Set ``edge_weight`` to ``w_ij / sqrt(deg_i * deg_j)`` (GCN's symmetric normalisation); degrees
    are weighted in-degrees. Apply after AddSelfLoops for GCN's ``D^-1/2 (A + I) D^-1/2``. Deterministic."""

    random = False

    def __call__(self, g: Graph, generator: torch.Generator | None = None) -> Graph:
        src, dst = g.edge_index
        w = g.edge_weight if g.edge_weight is not None else torch.ones(g.num_edges, device=src.device)
        deg = torch.zeros(g.num_nodes, dtype=w.dtype, device=w.device).index_add_(0, dst, w)
        inv = deg.clamp_min(1e-12).rsqrt()
        return g.replace(edge_weight=inv[src] * w * inv[dst])
