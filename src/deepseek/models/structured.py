"""Dense prediction, sets, graphs and cross-modal retrieval: U-Net (Ronneberger et al. 2015), PointNet
(Qi et al. 2017), a graph transformer with attention along edges (Dwivedi & Bresson 2021), and the
cross-modal hashing model of document 000 (image + text -> a 128-bit code)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepseek.nn.graph_ops import segment_softmax, segment_sum
from deepseek.registry import register_model


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )  # fmt: skip


class UNet(nn.Module):
    """``(N, in_channels, H, W) -> (N, num_classes, H, W)`` per-pixel logits; H, W divisible by 2**depth."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base: int = 64, depth: int = 4) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [double_conv(in_channels, widths[0])] + [double_conv(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in reversed(range(depth))])
        self.merge = nn.ModuleList([double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.out = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class PointNet(nn.Module):
    """Points ``(N, P, in_features)`` -> ``(N, num_classes)``: a shared per-point MLP, max-pooling (order
    invariant), then a classifier."""

    def __init__(self, in_features: int = 3, num_classes: int = 40, dropout: float = 0.3) -> None:
        super().__init__()
        dims = [in_features, 64, 64, 64, 128, 1024]
        layers: list[nn.Module] = []
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Conv1d(a, b, 1), nn.BatchNorm1d(b), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(1024, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 256), nn.BatchNorm1d(256),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, num_classes))  # fmt: skip

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(points.transpose(1, 2)).amax(dim=2))


class EdgeAttentionLayer(nn.Module):
    """Multi-head attention of each node over its in-neighbours only (sparse, along ``edge_index``), then
    a feed-forward; both pre-norm with residuals. ``x (nodes, dim) -> (nodes, dim)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, 3, self.heads, -1).unbind(1)
        src, dst = edge_index
        # The edge softmax and the message sums run in float32 whatever autocast made of q, k, v (bf16/fp16
        # sums over edges lose precision); the result goes back to x's dtype for proj, whose weights may be
        # bf16/fp16 themselves (model.to(dtype)).
        score = (q[dst].float() * k[src].float()).sum(-1) * self.scale  # (E, heads)
        weight = segment_softmax(score, dst, n)  # over each node's in-edges
        out = segment_sum(v[src].float() * weight.unsqueeze(-1), dst, n)  # (nodes, heads, dim // heads)
        x = x + self.proj(out.reshape(n, dim).to(x.dtype))
        return x + self.ffn(self.norm2(x))


class GraphTransformerNet(nn.Module):
    """A graph batch (any object with ``x (nodes, in_features)``, ``edge_index (2, E)`` and ``batch
    (nodes,)``, e.g. ``deepseek.data.graph.collate_graphs``) -> per-graph logits ``(graphs, num_classes)``.
    Self-loops are added so every node attends to itself."""

    def __init__(
        self, in_features: int = 16, dim: int = 64, depth: int = 3, heads: int = 4, num_classes: int = 2
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, dim)
        self.layers = nn.ModuleList([EdgeAttentionLayer(dim, heads) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, graph: Any) -> torch.Tensor:
        x = self.embed(graph.x)
        loops = torch.arange(x.shape[0], device=x.device).expand(2, -1)
        edges = torch.cat([graph.edge_index, loops], dim=1)
        for layer in self.layers:
            x = layer(x, edges)
        batch = graph.batch if graph.batch is not None else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        graphs = int(batch.max()) + 1
        pooled = segment_sum(x, batch, graphs) / torch.bincount(batch, minlength=graphs).clamp_min(1).unsqueeze(-1)
        return self.head(pooled.to(x.dtype))  # float32 mean, back to the activations' dtype for the head


class CrossModalHashing(nn.Module):
    """Document 000's model: ``(images (N, C, H, W), token ids (N, L))`` -> continuous codes ``(N, bits)``
    in (-1, 1) from a fused image + text encoder; :meth:`hash` gives the binary code (``{0, 1}``, N x bits)."""

    def __init__(self, bits: int = 128, in_channels: int = 3, vocab_size: int = 30522, dim: int = 256) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, dim),
        )  # fmt: skip
        self.text = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.fuse = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, bits))

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]) -> torch.Tensor:
        images, ids = (batch["image"], batch["input_ids"]) if isinstance(batch, dict) else batch
        return torch.tanh(self.fuse(torch.cat([self.image(images), self.text(ids)], dim=-1)))

    @torch.no_grad()
    def hash(self, batch: Any) -> torch.Tensor:
        return (self(batch) > 0).to(torch.uint8)


@register_model("unet")
def unet(in_channels: int = 3, num_classes: int = 2, base: int = 64, depth: int = 4) -> UNet:
    """U-Net for segmentation (31M parameters at base 64, depth 4)."""
    return UNet(in_channels, num_classes, base, depth)


@register_model("pointnet")
def pointnet(in_features: int = 3, num_classes: int = 40, dropout: float = 0.3) -> PointNet:
    """PointNet classifier for point clouds (shared MLP + max-pool)."""
    return PointNet(in_features, num_classes, dropout)


@register_model("graph_transformer")
def graph_transformer(
    in_features: int = 16, dim: int = 64, depth: int = 3, heads: int = 4, num_classes: int = 2
) -> GraphTransformerNet:
    """Graph transformer: attention along edges, mean pooling per graph."""
    return GraphTransformerNet(in_features, dim, depth, heads, num_classes)


@register_model("cross_modal_hashing")
def cross_modal_hashing(
    bits: int = 128, in_channels: int = 3, vocab_size: int = 30522, dim: int = 256
) -> CrossModalHashing:
    """Image + text -> a 128-bit hash code for cross-modal retrieval (document 000)."""
    return CrossModalHashing(bits, in_channels, vocab_size, dim)
