"""``ds.data``: registered datasets and the sharded, resumable loader the Trainer uses."""

from __future__ import annotations

from deepseek.data import (  # noqa: F401  (register their datasets)
    bundled,
    folders,
    subset,  # noqa: F401  (a fixed handful of another dataset's samples)
    tasks,  # noqa: F401  (the task datasets: LM, seq2seq, CTC, segmentation, points, graphs, series)
    transforms,  # noqa: F401  (registers the transforms)
)
from deepseek.data import datasets as _datasets  # noqa: F401  (registers the builders)
from deepseek.data.datasets import DatasetSplits, build_dataset
from deepseek.data.distributed import DistributedDataset
from deepseek.data.loader import ResumableDataLoader, ShardedSampler
from deepseek.data.multimodal import (  # feature steps; the front ends (TextProcessor...) are in deepseek.multimodal
    AudioFeatures,
    GraphFeatures,
    MultimodalCollate,
    PointCloudFeatures,
    TextFeatures,
    TimeSeriesFeatures,
    VisionFeatures,
)  # fmt: skip
from deepseek.data.transforms import Pipeline

__all__ = [
    "AudioFeatures",
    "GraphFeatures",
    "MultimodalCollate",
    "PointCloudFeatures",
    "TextFeatures",
    "TimeSeriesFeatures",
    "VisionFeatures",
    "DatasetSplits",
    "DistributedDataset",
    "Pipeline",
    "ResumableDataLoader",
    "ShardedSampler",
    "build_dataset",
    "transforms",
]
