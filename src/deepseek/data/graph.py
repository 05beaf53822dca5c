"""A small graph sample type and its batch, so graph data needs no heavy graph library.

``Graph(x (N, F) float, edge_index (2, E) int64, edge_weight (E,) float | None, y)``;
:func:`collate_graphs` makes one disjoint-union graph with a ``batch`` vector ``(sum N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass
class Graph:
    x: torch.Tensor
    edge_index: torch.Tensor
    edge_weight: torch.Tensor | None = None
    y: Any = None
    batch: torch.Tensor | None = None  # set on a collated batch: the graph each node belongs to

    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def replace(self, **changes: Any) -> Graph:
        return replace(self, **changes)

    def to(self, device: torch.device | str) -> Graph:
        move = lambda t: t.to(device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Graph(move(self.x), move(self.edge_index), move(self.edge_weight), move(self.y), move(self.batch))


def collate_graphs(graphs: list[Graph]) -> Graph:
    """Disjoint union: node features stacked, edge indices offset, ``batch[i]`` = graph of node ``i``."""
    offsets = torch.cumsum(torch.tensor([0] + [g.num_nodes for g in graphs[:-1]]), 0)
    edges = torch.cat([g.edge_index + off for g, off in zip(graphs, offsets)], dim=1)
    weights = None
    if any(g.edge_weight is not None for g in graphs):
        weights = torch.cat([g.edge_weight if g.edge_weight is not None else torch.ones(g.num_edges) for g in graphs])
    ys = [g.y for g in graphs]
    y = (
        torch.stack(ys)
        if all(isinstance(v, torch.Tensor) for v in ys)
        else (torch.tensor(ys) if all(isinstance(v, (int, float)) for v in ys) else ys)
    )
    batch = torch.cat([torch.full((g.num_nodes,), i, dtype=torch.long) for i, g in enumerate(graphs)])
    return Graph(torch.cat([g.x for g in graphs]), edges, weights, y, batch)
