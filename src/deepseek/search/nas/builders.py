"""A candidate -> a model spec (``{name, **kwargs}``, what a run config's ``model:`` holds) -> an ``nn.Module``.

A stack candidate becomes :func:`nas_stack` named by its import path
``deepseek.search.nas.builders:nas_stack``, so the best architecture is an ordinary run config that
``deepseek train best.yaml`` runs (the model registry imports it by that path). A model-family candidate is
the family's name with the base config's model arguments updated by the chosen ones.

Images ``(N, C, H, W)`` go through the blocks as feature maps ``(N, channels, H', W')``:

* ``Conv``: ``depth`` x (Conv2d(kernel_size, padding kernel_size // 2) + BatchNorm2d + activation); the first
  conv has stride 2 while the map is at least 8 pixels wide (a proxy-trainable cost on CPU);
* ``Transformer``: on the raw image a patch embedding (Conv2d, kernel = stride = ``patch_size``, default the
  smallest giving at most 64 tokens) plus a learned position embedding, after another block a 1x1 projection
  when the width changes; then ``depth`` pre-norm ``nn.TransformerEncoderLayer`` (``heads`` heads, feed-forward
  2 x width, the block's activation) over the ``H' * W'`` tokens;

then global average pooling and a linear classifier ``(N, num_classes)``.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

import deepseek.models  # noqa: F401  (registers the built-in model families)
from deepseek import registry as reg
from deepseek.search.nas.space import BLOCK_DEFAULTS, SearchSpace

STACK_PATH = "deepseek.search.nas.builders:nas_stack"
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "swish": nn.SiLU, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh, "leakyrelu": nn.LeakyReLU,
    "elu": nn.ELU, "hardswish": nn.Hardswish, "mish": nn.Mish, "sigmoid": nn.Sigmoid,
}  # fmt: skip
MAX_TOKENS = 64


def activation(name: str) -> nn.Module:
    """``ReLU`` -> ``nn.ReLU()``; ``Swish`` is ``nn.SiLU`` (x * sigmoid(x), Ramachandran et al. 2017)."""
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(f"activation: {name!r}; allowed: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[key]()


class ConvBlock(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, channels, H / stride, W / stride)``."""

    def __init__(self, c_in: int, channels: int, depth: int, kernel_size: int, act: str, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(c_in if i == 0 else channels, channels, kernel_size, stride if i == 0 else 1,
                                 padding=kernel_size // 2, bias=False),
                       nn.BatchNorm2d(channels), activation(act)]  # fmt: skip
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, channels, H / patch, W / patch)``: tokens through encoder layers."""

    def __init__(self, c_in: int, channels: int, depth: int, heads: int, act: str, patch: int, hw: tuple[int, int],
                 embed: bool) -> None:  # fmt: skip
        super().__init__()
        if channels % heads:
            raise ValueError(f"heads: {heads} does not divide channels {channels}; allowed: a divisor of channels")
        # patch embedding on the raw image (ViT); between blocks only a width change needs a projection
        self.proj = nn.Conv2d(c_in, channels, patch, patch) if embed or c_in != channels or patch > 1 else None
        self.pos = nn.Parameter(torch.zeros(1, hw[0] * hw[1], channels)) if embed else None
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                channels,
                heads,
                2 * channels,
                dropout=0.0,
                activation=activation(act),
                batch_first=True,
                norm_first=True,
            )  # fmt: skip
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proj is not None:
            x = self.proj(x)
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, H*W, C)
        if self.pos is not None:
            tokens = tokens + self.pos
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens).transpose(1, 2).reshape(n, c, h, w)


def _patch(h: int, w: int) -> int:
    """The smallest patch giving at most MAX_TOKENS tokens."""
    p = 1
    while (h // p) * (w // p) > MAX_TOKENS:
        p += 1
    return p


class NASStack(nn.Module):
    """A searched stack of Conv / Transformer blocks and a classifier: ``(N, C, H, W)`` -> logits ``(N, classes)``."""

    def __init__(self, blocks: list[dict[str, Any]], in_channels: int, num_classes: int, image_size: list[int]) -> None:
        super().__init__()
        h, w = image_size
        c = in_channels
        body: list[nn.Module] = []
        for i, raw in enumerate(blocks):
            b = {**BLOCK_DEFAULTS, **raw}
            kind = str(b["layer_type"]).lower()
            if kind == "conv":
                stride = 2 if min(h, w) >= 8 else 1
                body.append(ConvBlock(c, b["channels"], b["depth"], b["kernel_size"], b["activation"], stride))
                h, w = (h + 1) // 2 if stride == 2 else h, (w + 1) // 2 if stride == 2 else w
            elif kind == "transformer":
                embed = i == 0  # on the raw image: patch and position embedding
                patch = b["patch_size"] or (_patch(h, w) if embed else 1)
                h, w = h // patch, w // patch
                if h < 1 or w < 1:
                    raise ValueError(f"blocks[{i}].patch_size: {patch} is larger than the {h * patch}x{w * patch} map")
                body.append(TransformerBlock(c, b["channels"], b["depth"], b["heads"], b["activation"], patch,
                                             (h, w), embed))  # fmt: skip
            else:
                raise ValueError(f"blocks[{i}].layer_type: {b['layer_type']!r}; allowed: Conv, Transformer")
            c = b["channels"]
        self.body = nn.Sequential(*body)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def nas_stack(
    blocks: list[dict[str, Any]], in_channels: int = 1, num_classes: int = 10, image_size: list[int] | None = None
) -> nn.Module:
    """A searched stack (see the module docstring); ``image_size`` ``[H, W]`` (default 28 x 28)."""
    return NASStack(blocks, in_channels, num_classes, list(image_size or [28, 28]))


def model_spec(space: SearchSpace, candidate: dict[str, Any], base_model: dict[str, Any],
               input_shape: tuple[int, ...] | None, num_classes: int | None) -> dict[str, Any]:  # fmt: skip
    """The run config's ``model:`` section for ``candidate``: ``{name, **kwargs}``. ``base_model`` is the base
    config's ``model:`` mapping; ``input_shape`` ``(C, H, W)`` and ``num_classes`` come from its data."""
    if space.kind == "model":
        kept = dict(base_model) if str(base_model.get("name", "")).lower() == space.model.lower() else {}
        kept.pop("name", None)
        return {"name": space.model, **kept, **candidate}
    if input_shape is None or len(input_shape) != 3 or num_classes is None:
        raise ValueError(f"data: input shape {input_shape} with {num_classes} classes; allowed: images (C, H, W) "
                         f"with a class count (a stack search classifies images)")  # fmt: skip
    c, h, w = input_shape
    return {"name": STACK_PATH, "blocks": space.block_list(candidate), "in_channels": int(c),
            "num_classes": int(num_classes), "image_size": [int(h), int(w)]}  # fmt: skip


def build(spec: dict[str, Any], device: torch.device | str | None = None) -> nn.Module:
    """The module a model spec describes, built on ``device`` (``"meta"``: shapes only, no memory)."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    with torch.device(device) if device is not None else nullcontext():
        return reg.models.build(spec["name"], **kwargs)
