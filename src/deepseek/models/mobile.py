"""Mobile CNNs: MobileNetV3 small/large (Howard et al. 2019) and EfficientNet-B0 (Tan & Le 2019).

Images ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``. Block tables follow the papers; at
1000 classes the counts are 5,483,032 (large), 2,542,856 (small) and 5,288,548 (B0).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from deepseek.registry import register_model


def _divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% below ``v``."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel attention: global pool -> 1x1 conv (``squeeze``) -> act -> 1x1 conv -> gate."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (kxk) -> [squeeze-excite] -> project (1x1), residual when shapes allow."""

    def __init__(
        self, cin: int, kernel: int, expanded: int, cout: int, se: nn.Module | None, act: type[nn.Module], stride: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_bn(cin, expanded, 1, act=act))
        layers.append(conv_bn(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se is not None:
            layers.append(se)
        layers.append(conv_bn(expanded, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


# (in, kernel, expanded, out, squeeze-excite, hard-swish, stride)
LARGE = [(16, 3, 16, 16, 0, 0, 1), (16, 3, 64, 24, 0, 0, 2), (24, 3, 72, 24, 0, 0, 1), (24, 5, 72, 40, 1, 0, 2),
         (40, 5, 120, 40, 1, 0, 1), (40, 5, 120, 40, 1, 0, 1), (40, 3, 240, 80, 0, 1, 2), (80, 3, 200, 80, 0, 1, 1),
         (80, 3, 184, 80, 0, 1, 1), (80, 3, 184, 80, 0, 1, 1), (80, 3, 480, 112, 1, 1, 1), (112, 3, 672, 112, 1, 1, 1),
         (112, 5, 672, 160, 1, 1, 2), (160, 5, 960, 160, 1, 1, 1), (160, 5, 960, 160, 1, 1, 1)]  # fmt: skip
SMALL = [(16, 3, 16, 16, 1, 0, 2), (16, 3, 72, 24, 0, 0, 2), (24, 3, 88, 24, 0, 0, 1), (24, 5, 96, 40, 1, 1, 2),
         (40, 5, 240, 40, 1, 1, 1), (40, 5, 240, 40, 1, 1, 1), (40, 5, 120, 48, 1, 1, 1), (48, 5, 144, 48, 1, 1, 1),
         (48, 5, 288, 96, 1, 1, 2), (96, 5, 576, 96, 1, 1, 1), (96, 5, 576, 96, 1, 1, 1)]  # fmt: skip


class MobileNetV3(nn.Module):
    def __init__(
        self,
        table: list[tuple[int, ...]],
        last_channel: int,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 16, 3, 2, act=nn.Hardswish)]
        for cin, k, exp, cout, se, hs, stride in table:
            squeeze = SqueezeExcite(exp, _divisible(exp // 4), nn.ReLU, nn.Hardsigmoid) if se else None
            layers.append(InvertedResidual(cin, k, exp, cout, squeeze, nn.Hardswish if hs else nn.ReLU, stride))
        final = 6 * table[-1][3]
        layers.append(conv_bn(table[-1][3], final, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(final, last_channel), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(last_channel, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# (expand ratio, kernel, stride, in, out, repeats)
B0 = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]  # fmt: skip


class MBConv(nn.Module):
    """EfficientNet block: inverted residual with SiLU, squeeze-excite (input/4 channels), stochastic depth."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop_path: float) -> None:
        super().__init__()
        se = SqueezeExcite(cin * expand, max(1, cin // 4), nn.SiLU, nn.Sigmoid)
        self.block = InvertedResidual(cin, kernel, cin * expand, cout, se, nn.SiLU, stride).block
        self.residual, self.drop_path = stride == 1 and cin == cout, drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_path
            y = y * keep / (1 - self.drop_path)
        return x + y


class EfficientNet(nn.Module):
    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2, drop_path: float = 0.2
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, 32, 3, 2, act=nn.SiLU)]
        total, i = sum(r for *_, r in B0), 0
        for expand, k, stride, cin, cout, repeats in B0:
            for j in range(repeats):
                layers.append(
                    MBConv(cin if j == 0 else cout, cout, expand, k, stride if j == 0 else 1, drop_path * i / total)
                )
                i += 1
        layers.append(conv_bn(320, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> MobileNetV3:
    """MobileNetV3-Large (5.5M parameters at 1000 classes)."""
    return MobileNetV3(LARGE, 1280, num_classes, in_channels, dropout)


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2) -> MobileNetV3:
    """MobileNetV3-Small (2.5M parameters at 1000 classes)."""
    return MobileNetV3(SMALL, 1024, num_classes, in_channels, dropout)


@register_model("efficientnet_b0")
def efficientnet_b0(
    num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.2, drop_path: float = 0.2
) -> EfficientNet:
    """EfficientNet-B0 (5.3M parameters at 1000 classes)."""
    return EfficientNet(num_classes, in_channels, dropout, drop_path)
