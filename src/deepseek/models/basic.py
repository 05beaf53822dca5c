"""Small reference models: an MLP and a CNN for small images (the quick start's model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn as nn
from annotated_types import Ge, Gt, Lt

from deepseek.registry import register_model


class MLP(nn.Module):
    """Flatten, then ``Linear -> ReLU [-> Dropout]`` per hidden width, then a linear head.

    Input ``(N, *)`` with ``prod(*) == in_features``; output logits ``(N, num_classes)``.
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int] = (256, 256), num_classes: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimpleCNN(nn.Module):
    """Three 3x3 conv blocks (BatchNorm, ReLU, one 2x2 max-pool), global average pool, linear head.

    Input ``(N, in_channels, H, W)`` with ``H, W >= 2``; output logits ``(N, num_classes)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(in_channels, width),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


Positive = Annotated[int, Gt(0)]
Dropout = Annotated[float, Ge(0), Lt(1)]


@register_model("mlp")
def mlp(
    in_features: Positive, hidden: list[Positive] = [256, 256], num_classes: Positive = 10, dropout: Dropout = 0.0
) -> MLP:
    """Multi-layer perceptron on flattened inputs."""
    return MLP(in_features, hidden, num_classes, dropout)


@register_model("simple_cnn", aliases=("cnn",))
def simple_cnn(
    in_channels: Positive = 1, num_classes: Positive = 10, width: Positive = 32, dropout: Dropout = 0.1
) -> SimpleCNN:
    """Three-block CNN for small images (8x8 digits, 28x28 MNIST)."""
    return SimpleCNN(in_channels, num_classes, width, dropout)
