"""Registered transforms for six modalities, and :class:`Pipeline` to chain them.

``deepseek list transforms`` shows them with their modality. Every transform takes an optional
``generator`` and draws all its randomness from it, so a seeded pipeline is reproducible.
"""

from deepseek.data.transforms import audio, graph, pointcloud, text, timeseries, vision  # noqa: F401 (registers)
from deepseek.data.transforms.audio import (
    AddNoise,
    FeatureExtract,
    Resample,
    SpecAugment,
    SpecMix,
    SpeedPerturb,
    TimeShift,
    VolumePerturb,
)
from deepseek.data.transforms.base import MODALITIES, Pipeline, Transform, TransformError, build_transform
from deepseek.data.transforms.graph import AddSelfLoops, EdgeDropout, NodeFeatureMask, NormalizeAdjacency
from deepseek.data.transforms.pointcloud import (
    FarthestPointSample,
    Jitter3D,
    NormalizeUnitSphere,
    RandomRotation3D,
    RandomScale3D,
)
from deepseek.data.transforms.text import (
    Lowercase,
    RandomDeletion,
    RandomSwap,
    RandomTokenMask,
    Tokenize,
    TruncatePad,
    train_tokenizer,
)
from deepseek.data.transforms.timeseries import Jitter, MagnitudeWarp, Scaling, Standardize, TimeWarp, Window
from deepseek.data.transforms.vision import (
    CenterCrop,
    ColorJitter,
    CutMix,
    GaussianBlur,
    GaussianNoise,
    Grayscale,
    MixUp,
    Normalize,
    RandAugment,
    RandomAffine,
    RandomCrop,
    RandomErasing,
    RandomGamma,
    RandomHorizontalFlip,
    RandomPerspective,
    RandomResizedCrop,
    RandomRotation,
    RandomVerticalFlip,
    Resize,
)  # fmt: skip

__all__ = [name for name in dir() if name[0].isupper() or name in ("build_transform", "train_tokenizer")]
