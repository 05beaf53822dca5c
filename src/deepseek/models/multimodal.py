"""The small encoders of the six modality front ends (document 004): each embeds a batch that the matching
feature step of :mod:`deepseek.data.multimodal` produced into ``(N, embed_dim)``, so modalities can be fused
by concatenation or attention. :mod:`deepseek.multimodal` pairs each encoder with its feature step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from deepseek.nn.graph_ops import segment_softmax, segment_sum

__all__ = ["AudioEncoder", "GraphEncoder", "ImageEncoder", "PointEncoder", "SeriesEncoder", "TokenEncoder"]


class TokenEncoder(nn.Module):
    """``{"input_ids", "attention_mask"}`` ``(N, L)`` -> masked mean of token embeddings ``(N, embed_dim)``."""

    def __init__(self, vocab_size: int, embed_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (self.embedding(batch["input_ids"]) * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class ImageEncoder(nn.Module):
    """Images ``(N, channels, H, W)`` -> small CNN -> ``(N, embed_dim)``."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, embed_dim),
        )  # fmt: skip

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


class AudioEncoder(nn.Module):
    """Log-mel features ``(N, 1, n_mels, frames)`` -> small 2-D CNN -> ``(N, embed_dim)``."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, embed_dim),
        )  # fmt: skip

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


class SeriesEncoder(nn.Module):
    """Series ``(N, channels, T)`` -> dilated 1-D convolutions -> ``(N, embed_dim)``."""

    def __init__(self, channels: int, embed_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for dilation in (1, 2, 4):
            layers += [nn.Conv1d(width, 32, 3, padding=dilation, dilation=dilation), nn.ReLU()]
            width = 32
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, embed_dim))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


class GraphEncoder(nn.Module):
    """A batched graph (``x (nodes, in_features)``, ``edge_index (2, E)``, ``edge_weight (E,)``, ``batch (nodes,)``
    or None) -> two graph-convolution layers, then attention pooling over each graph's nodes ->
    ``(num_graphs, embed_dim)``."""

    def __init__(self, in_features: int, embed_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_features, embed_dim), nn.Linear(embed_dim, embed_dim)])
        self.score = nn.Linear(embed_dim, 1)

    def forward(self, g: Any) -> torch.Tensor:
        src, dst = g.edge_index
        h = g.x
        for layer in self.layers:  # h_i <- relu(sum_j w_ji * W h_j)
            msg = layer(h)[src] * g.edge_weight.unsqueeze(-1)
            h = torch.relu(
                torch.zeros(h.shape[0], msg.shape[1], device=h.device, dtype=msg.dtype).index_add_(0, dst, msg)
            )
        batch = g.batch if g.batch is not None else torch.zeros(h.shape[0], dtype=torch.long, device=h.device)
        graphs = int(batch.max()) + 1
        # The per-graph softmax and the weighted sum run in float32 whatever autocast made of the scores
        # (bf16/fp16 exp-sums lose precision); the embedding is returned in h's dtype, as the other encoders'.
        weight = segment_softmax(self.score(h).squeeze(-1), batch, graphs)  # (nodes,) over each graph's nodes
        return segment_sum(h.float() * weight.unsqueeze(-1), batch, graphs).to(h.dtype)


class PointEncoder(nn.Module):
    """Points ``(N, P, 3)`` -> PointNet (shared MLP, max pool over points) -> ``(N, embed_dim)``."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, embed_dim))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.mlp(batch).amax(dim=1)
