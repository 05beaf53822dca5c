"""The six modality front ends of document 004: a feature step (:mod:`deepseek.data.multimodal`, not a module)
paired with an optional small encoder (:mod:`deepseek.models.multimodal`).

Each front end turns a raw sample into model-ready tensors (``preprocess``), batches them (``collate``) and,
when built with ``embed_dim``, embeds a batch into ``(N, embed_dim)`` (``forward``), so their outputs can be
fused by concatenation or attention. This module sits above ``data`` and ``models`` (docs/architecture.md):
neither of them defines a front end, and neither imports the other.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from deepseek.data.multimodal import (
    AudioFeatures,
    Features,
    GraphFeatures,
    MultimodalCollate,
    PointCloudFeatures,
    TextFeatures,
    TimeSeriesFeatures,
    VisionFeatures,
)  # fmt: skip
from deepseek.models.multimodal import (
    AudioEncoder,
    GraphEncoder,
    ImageEncoder,
    PointEncoder,
    SeriesEncoder,
    TokenEncoder,
)  # fmt: skip

__all__ = ["AudioExtractor", "GraphTransformer", "MultimodalCollate", "PointCloud3D", "Processor", "TextProcessor",
           "TimeSeriesNet", "VisionEncoder"]  # fmt: skip


class Processor(nn.Module):
    """Base: ``preprocess(raw)`` per sample and ``collate(list)`` per batch (the feature step's),
    ``forward(batch) -> (N, embed_dim)`` (the encoder's; only when built with ``embed_dim``)."""

    modality = "any"

    def __init__(self, features: Features, encoder: nn.Module | None = None, embed_dim: int | None = None) -> None:
        super().__init__()
        self.features, self.embed_dim = features, embed_dim
        self.modality = features.modality
        if encoder is not None:
            self.encoder = encoder
            self.register_load_state_dict_pre_hook(_encoder_keys_from_before_the_split)

    def preprocess(self, raw: Any) -> Any:
        return self.features.preprocess(raw)

    def collate(self, items: list[Any]) -> Any:
        return self.features.collate(items)

    def forward(self, batch: Any) -> torch.Tensor:
        if self.embed_dim is None:
            raise RuntimeError(f"{type(self).__name__} was built without embed_dim: it preprocesses only")
        return self.encoder(batch)


def _encoder_keys_from_before_the_split(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                                        *_: Any) -> None:
    """Weights saved before the encoders moved into ``self.encoder`` had no ``encoder.`` in their keys:
    rename them in place so such a state dict still loads."""
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "encoder.")]:
        state_dict[prefix + "encoder." + key[len(prefix):]] = state_dict.pop(key)


class TextProcessor(Processor):
    """``str -> {"input_ids", "attention_mask"} (max_length,)``; encoder: masked mean of token embeddings."""

    def __init__(
        self, tokenizer: str = "minilm", max_length: int = 64, vocab_size: int = 30522, embed_dim: int | None = None
    ) -> None:
        encoder = TokenEncoder(vocab_size, embed_dim) if embed_dim else None
        super().__init__(TextFeatures(tokenizer, max_length), encoder, embed_dim)


class VisionEncoder(Processor):
    """Image ``(C, H, W)`` in [0, 1] (or uint8) -> resized, normalised ``(C, size, size)``; encoder: small CNN."""

    def __init__(self, size: int = 32, channels: int = 3, embed_dim: int | None = None) -> None:
        encoder = ImageEncoder(channels, embed_dim) if embed_dim else None
        super().__init__(VisionFeatures(size, channels), encoder, embed_dim)


class AudioExtractor(Processor):
    """Waveform (dict with ``sample_rate`` or a tensor at ``sample_rate``) -> log-mel ``(1, n_mels, frames)``
    of exactly ``duration_s``; encoder: small 2-D CNN."""

    def __init__(
        self, sample_rate: int = 16000, n_mels: int = 40, duration_s: float = 1.0, embed_dim: int | None = None
    ) -> None:
        encoder = AudioEncoder(embed_dim) if embed_dim else None
        super().__init__(AudioFeatures(sample_rate, n_mels, duration_s), encoder, embed_dim)


class TimeSeriesNet(Processor):
    """Series ``(C, T)`` -> standardised, cropped/padded ``(C, length)``; encoder: dilated 1-D convolutions."""

    def __init__(self, channels: int = 1, length: int = 128, embed_dim: int | None = None) -> None:
        encoder = SeriesEncoder(channels, embed_dim) if embed_dim else None
        super().__init__(TimeSeriesFeatures(length), encoder, embed_dim)


class GraphTransformer(Processor):
    """Graph -> self-loops + symmetric-normalised edge weights; encoder: two graph-convolution layers,
    then attention pooling over each graph's nodes -> ``(num_graphs, embed_dim)``."""

    def __init__(self, in_features: int = 8, embed_dim: int | None = None) -> None:
        encoder = GraphEncoder(in_features, embed_dim) if embed_dim else None
        super().__init__(GraphFeatures(), encoder, embed_dim)


class PointCloud3D(Processor):
    """Points ``(P, 3+)`` -> unit-sphere normalised, farthest-point sampled ``(num_points, 3)``
    (repeated when fewer); encoder: PointNet (shared MLP, max pool)."""

    def __init__(self, num_points: int = 256, embed_dim: int | None = None) -> None:
        encoder = PointEncoder(embed_dim) if embed_dim else None
        super().__init__(PointCloudFeatures(num_points), encoder, embed_dim)
