"""Vision classics: LeNet-5, ResNet-18/34/50 (He et al. 2016), ViT (Dosovitskiy et al. 2021).

Shapes: images ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``. Parameter counts match the
published models (resnet50 25.56M, vit_base_patch16 86.57M at 1000 classes, 224x224).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from deepseek.models.blocks import EncoderBlock, GradientCheckpointing
from deepseek.registry import register_model


class LeNet5(nn.Module):
    """LeCun et al. 1998 with ReLU and max-pooling: ``(N, C, 28, 28) -> (N, num_classes)`` (28x28 only)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width)
        self.shortcut = _shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.shortcut = _shortcut(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """ResNet v1.5 (stride on the 3x3 conv): stem, four stages of ``layers`` blocks, global pool, head."""

    def __init__(
        self, block: type[nn.Module], layers: list[int], num_classes: int = 1000, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        stages, cin = [], 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class ViT(GradientCheckpointing, nn.Module):
    """Vision transformer: ``patch``-sized patches, a class token, learned positions, ``depth`` blocks."""

    def __init__(self, image_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patchify = nn.Conv2d(in_channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([EncoderBlock(dim, heads, dropout=dropout) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patchify(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.run_blocks(tokens))[:, 0])


@register_model("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10) -> LeNet5:
    """LeNet-5 for 28x28 digits."""
    return LeNet5(in_channels, num_classes)


@register_model("resnet18")
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 (11.7M parameters at 1000 classes)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels)


@register_model("resnet34")
def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-34 (21.8M parameters at 1000 classes)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_channels)


@register_model("resnet50")
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 v1.5 with bottlenecks (25.6M parameters at 1000 classes)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


@register_model("vit_tiny")
def vit_tiny(image_size: int = 224, patch: int = 16, num_classes: int = 1000, in_channels: int = 3) -> ViT:
    """ViT-Ti/16: width 192, depth 12, 3 heads (5.7M parameters)."""
    return ViT(image_size, patch, 192, 12, 3, num_classes, in_channels)


@register_model("vit_base_patch16")
def vit_base_patch16(image_size: int = 224, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0) -> ViT:
    """ViT-B/16: width 768, depth 12, 12 heads (86.6M parameters at 1000 classes)."""
    return ViT(image_size, 16, 768, 12, 12, num_classes, in_channels, dropout)
