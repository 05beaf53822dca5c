"""The six modality feature steps of document 004 and a collate function for mixed-modality batches.

Each feature step turns a raw sample into model-ready tensors (``preprocess``) and batches them (``collate``);
none is an ``nn.Module``. Their encoders live in :mod:`deepseek.models.multimodal`, and
:mod:`deepseek.multimodal` pairs the two as the front ends ``TextProcessor``, ``VisionEncoder``, ...
:class:`MultimodalCollate` batches dict samples whose modalities may differ from sample to sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import default_collate

from deepseek.data.bundled import fit_length
from deepseek.data.graph import Graph, collate_graphs
from deepseek.data.transforms import (
    AddSelfLoops,
    FarthestPointSample,
    FeatureExtract,
    Normalize,
    NormalizeAdjacency,
    NormalizeUnitSphere,
    Resample,
    Resize,
    Standardize,
    Tokenize,
    TruncatePad,
)  # fmt: skip

__all__ = ["AudioFeatures", "Features", "GraphFeatures", "MultimodalCollate", "PointCloudFeatures",
           "TextFeatures", "TimeSeriesFeatures", "VisionFeatures"]  # fmt: skip


class Features:
    """Base: ``preprocess(raw)`` per sample, ``collate(list)`` per batch."""

    modality = "any"

    def preprocess(self, raw: Any) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)


class TextFeatures(Features):
    """``str -> {"input_ids", "attention_mask"} (max_length,)``."""

    modality = "text"

    def __init__(self, tokenizer: str = "minilm", max_length: int = 64) -> None:
        self.tokenize, self.pad = Tokenize(tokenizer), TruncatePad(max_length)

    def preprocess(self, raw: str) -> dict[str, torch.Tensor]:
        return self.pad(self.tokenize(raw))


class VisionFeatures(Features):
    """Image ``(C, H, W)`` in [0, 1] (or uint8) -> resized, normalised ``(C, size, size)``."""

    modality = "vision"

    def __init__(self, size: int = 32, channels: int = 3) -> None:
        self.resize = Resize(size)
        self.normalize = Normalize([0.5] * channels, [0.5] * channels)

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        img = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
        return self.normalize(self.resize(img))


class AudioFeatures(Features):
    """Waveform (dict with ``sample_rate`` or a tensor at ``sample_rate``) -> log-mel ``(1, n_mels, frames)``
    of exactly ``duration_s``."""

    modality = "audio"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 40, duration_s: float = 1.0) -> None:
        self.sample_rate, self.length = sample_rate, int(sample_rate * duration_s)
        self.resample = Resample(target_sr=sample_rate, orig_sr=sample_rate)
        self.features = FeatureExtract("fbank", n_mels=n_mels, sample_rate=sample_rate)

    def preprocess(self, raw: torch.Tensor | dict[str, Any]) -> torch.Tensor:
        sample = raw if isinstance(raw, dict) else {"waveform": raw, "sample_rate": self.sample_rate}
        wave = self.resample(sample)["waveform"]
        wave = fit_length(wave.reshape(-1, wave.shape[-1]).mean(0, keepdim=True), self.length)
        return self.features(wave)


class TimeSeriesFeatures(Features):
    """Series ``(C, T)`` -> standardised, cropped/padded ``(C, length)``."""

    modality = "timeseries"

    def __init__(self, length: int = 128) -> None:
        self.length, self.standardize = length, Standardize()

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        series = raw.float().reshape(-1, raw.shape[-1])
        return fit_length(self.standardize(series), self.length)


class GraphFeatures(Features):
    """Graph -> self-loops + symmetric-normalised edge weights; batches are one disjoint-union graph."""

    modality = "graph"

    def __init__(self) -> None:
        self.loops, self.norm = AddSelfLoops(), NormalizeAdjacency()

    def preprocess(self, raw: Graph) -> Graph:
        return self.norm(self.loops(raw))

    def collate(self, items: list[Graph]) -> Graph:
        return collate_graphs(items)


class PointCloudFeatures(Features):
    """Points ``(P, 3+)`` -> unit-sphere normalised, farthest-point sampled ``(num_points, 3)`` (repeated when fewer)."""

    modality = "pointcloud"

    def __init__(self, num_points: int = 256) -> None:
        self.num_points = num_points
        self.normalize, self.sample = NormalizeUnitSphere(), FarthestPointSample(num_points)

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        pts = self.normalize(raw[:, :3].float())
        pts = self.sample(pts, torch.Generator().manual_seed(0))  # a fixed start: preprocessing is deterministic
        if pts.shape[0] < self.num_points:
            pts = pts[torch.arange(self.num_points) % pts.shape[0]]
        return pts


class MultimodalCollate:
    """Batch dict samples ``{modality_key: raw, ..., "label": y}`` whose modalities may differ.

    Output: ``{key: processor batch of the samples that have key, "present": {key: bool (N,)},
    "label": collated labels}``; row ``i`` of ``batch[key]`` belongs to sample ``present[key].nonzero()[i]``.
    """

    def __init__(self, processors: Mapping[str, Any], label_key: str = "label") -> None:
        """``processors``: per key, anything with ``preprocess(raw)`` and ``collate(items)`` (a feature step
        above, or a front end of :mod:`deepseek.multimodal`)."""
        self.processors, self.label_key = processors, label_key

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        unknown = {k for s in samples for k in s} - set(self.processors) - {self.label_key}
        if unknown:
            raise KeyError(f"no processor for {sorted(unknown)}; processors: {sorted(self.processors)}")
        out: dict[str, Any] = {"present": {}}
        for key, proc in self.processors.items():
            present = torch.tensor([key in s for s in samples])
            out["present"][key] = present
            if present.any():
                out[key] = proc.collate([proc.preprocess(s[key]) for s in samples if key in s])
        if all(self.label_key in s for s in samples):
            out[self.label_key] = default_collate([s[self.label_key] for s in samples])
        return out
