"""The six modality front ends of document 004 and a collate function for mixed-modality batches.

Each processor turns a raw sample into model-ready tensors (``preprocess``), batches them
(``collate``) and, when built with ``embed_dim``, embeds a batch into ``(N, embed_dim)`` with a
small encoder (``forward``), so their outputs can be fused by concatenation or attention.
:class:`MultimodalCollate` batches dict samples whose modalities may differ from sample to sample.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
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
from deepseek.nn.graph_ops import segment_softmax, segment_sum


class Processor(nn.Module):
    """Base: ``preprocess(raw)`` per sample, ``collate(list)`` per batch, ``forward(batch) -> (N, embed_dim)``."""

    modality = "any"

    def __init__(self, embed_dim: int | None = None) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def preprocess(self, raw: Any) -> Any:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    def forward(self, batch: Any) -> torch.Tensor:
        if self.embed_dim is None:
            raise RuntimeError(f"{type(self).__name__} was built without embed_dim: it preprocesses only")
        return self.encode(batch)

    def encode(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError


class TextProcessor(Processor):
    """``str -> {"input_ids", "attention_mask"} (max_length,)``; encoder: masked mean of token embeddings."""

    modality = "text"

    def __init__(
        self, tokenizer: str = "minilm", max_length: int = 64, vocab_size: int = 30522, embed_dim: int | None = None
    ) -> None:
        super().__init__(embed_dim)
        self.tokenize, self.pad = Tokenize(tokenizer), TruncatePad(max_length)
        if embed_dim:
            self.embedding = nn.Embedding(vocab_size, embed_dim)

    def preprocess(self, raw: str) -> dict[str, torch.Tensor]:
        return self.pad(self.tokenize(raw))

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (self.embedding(batch["input_ids"]) * mask).sum(1) / mask.sum(1).clamp_min(1.0)


class VisionEncoder(Processor):
    """Image ``(C, H, W)`` in [0, 1] (or uint8) -> resized, normalised ``(C, size, size)``; encoder: small CNN."""

    modality = "vision"

    def __init__(self, size: int = 32, channels: int = 3, embed_dim: int | None = None) -> None:
        super().__init__(embed_dim)
        self.resize = Resize(size)
        self.normalize = Normalize([0.5] * channels, [0.5] * channels)
        if embed_dim:
            self.net = nn.Sequential(
                nn.Conv2d(channels, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, embed_dim),
            )  # fmt: skip

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        img = raw.float() / 255.0 if raw.dtype == torch.uint8 else raw.float()
        return self.normalize(self.resize(img))

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


class AudioExtractor(Processor):
    """Waveform (dict with ``sample_rate`` or a tensor at ``sample_rate``) -> log-mel ``(1, n_mels, frames)``
    of exactly ``duration_s``; encoder: small 2-D CNN."""

    modality = "audio"

    def __init__(
        self, sample_rate: int = 16000, n_mels: int = 40, duration_s: float = 1.0, embed_dim: int | None = None
    ) -> None:
        super().__init__(embed_dim)
        self.sample_rate, self.length = sample_rate, int(sample_rate * duration_s)
        self.resample = Resample(target_sr=sample_rate, orig_sr=sample_rate)
        self.features = FeatureExtract("fbank", n_mels=n_mels, sample_rate=sample_rate)
        if embed_dim:
            self.net = nn.Sequential(
                nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, embed_dim),
            )  # fmt: skip

    def preprocess(self, raw: torch.Tensor | dict[str, Any]) -> torch.Tensor:
        sample = raw if isinstance(raw, dict) else {"waveform": raw, "sample_rate": self.sample_rate}
        wave = self.resample(sample)["waveform"]
        wave = fit_length(wave.reshape(-1, wave.shape[-1]).mean(0, keepdim=True), self.length)
        return self.features(wave)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


class TimeSeriesNet(Processor):
    """Series ``(C, T)`` -> standardised, cropped/padded ``(C, length)``; encoder: dilated 1-D convolutions."""

    modality = "timeseries"

    def __init__(self, channels: int = 1, length: int = 128, embed_dim: int | None = None) -> None:
        super().__init__(embed_dim)
        self.length, self.standardize = length, Standardize()
        if embed_dim:
            layers: list[nn.Module] = []
            width = channels
            for dilation in (1, 2, 4):
                layers += [nn.Conv1d(width, 32, 3, padding=dilation, dilation=dilation), nn.ReLU()]
                width = 32
            self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, embed_dim))

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        series = raw.float().reshape(-1, raw.shape[-1])
        return fit_length(self.standardize(series), self.length)

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch)


class GraphTransformer(Processor):
    """Graph -> self-loops + symmetric-normalised edge weights; encoder: two graph-convolution layers,
    then attention pooling over each graph's nodes -> ``(num_graphs, embed_dim)``."""

    modality = "graph"

    def __init__(self, in_features: int = 8, embed_dim: int | None = None) -> None:
        super().__init__(embed_dim)
        self.loops, self.norm = AddSelfLoops(), NormalizeAdjacency()
        if embed_dim:
            self.layers = nn.ModuleList([nn.Linear(in_features, embed_dim), nn.Linear(embed_dim, embed_dim)])
            self.score = nn.Linear(embed_dim, 1)

    def preprocess(self, raw: Graph) -> Graph:
        return self.norm(self.loops(raw))

    def collate(self, items: list[Graph]) -> Graph:
        return collate_graphs(items)

    def encode(self, g: Graph) -> torch.Tensor:
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


class PointCloud3D(Processor):
    """Points ``(P, 3+)`` -> unit-sphere normalised, farthest-point sampled ``(num_points, 3)``
    (repeated when fewer); encoder: PointNet (shared MLP, max pool)."""

    modality = "pointcloud"

    def __init__(self, num_points: int = 256, embed_dim: int | None = None) -> None:
        super().__init__(embed_dim)
        self.num_points = num_points
        self.normalize, self.sample = NormalizeUnitSphere(), FarthestPointSample(num_points)
        if embed_dim:
            self.mlp = nn.Sequential(
                nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, embed_dim)
            )

    def preprocess(self, raw: torch.Tensor) -> torch.Tensor:
        pts = self.normalize(raw[:, :3].float())
        pts = self.sample(pts, torch.Generator().manual_seed(0))  # a fixed start: preprocessing is deterministic
        if pts.shape[0] < self.num_points:
            pts = pts[torch.arange(self.num_points) % pts.shape[0]]
        return pts

    def encode(self, batch: torch.Tensor) -> torch.Tensor:
        return self.mlp(batch).amax(dim=1)


class MultimodalCollate:
    """Batch dict samples ``{modality_key: raw, ..., "label": y}`` whose modalities may differ.

    Output: ``{key: processor batch of the samples that have key, "present": {key: bool (N,)},
    "label": collated labels}``; row ``i`` of ``batch[key]`` belongs to sample ``present[key].nonzero()[i]``.
    """

    def __init__(self, processors: dict[str, Processor], label_key: str = "label") -> None:
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
