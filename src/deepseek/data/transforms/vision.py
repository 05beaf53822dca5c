"""Vision transforms on float image tensors ``(C, H, W)`` or ``(N, C, H, W)``, CPU or CUDA.

Built on kornia's augmentations (``keepdim=True`` keeps the input's rank); kornia draws from torch's
global RNG, so each call runs under :func:`global_rng_from` the call's generator. CutMix and MixUp
are batch-level and written here: they take ``(images (N, C, H, W), labels (N,))`` and return
``(images, soft labels (N, num_classes))``.
"""

from __future__ import annotations

import importlib
import math

import torch
import torch.nn.functional as F

from deepseek.data.transforms.base import Transform, global_rng_from, transform, uniform

Range = float | tuple[float, float]
Size = int | tuple[int, int]


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class KorniaTransform(Transform):
    """Runs one kornia augmentation, seeded from the call's generator. kornia is imported when a
    vision transform is first built, not with ``deepseek`` (it takes ~0.3 s)."""

    def __init__(self, aug: str, *args: object, **kwargs: object) -> None:
        module, _, name = aug.rpartition(".")
        kornia_module = importlib.import_module("kornia.augmentation" + (f".{module}" if module else ""))
        self._aug = getattr(kornia_module, name)(*args, **kwargs)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with global_rng_from(generator):
            return self._aug(x)


@transform("RandomRotation", "vision")
class RandomRotation(KorniaTransform):
    """Rotate by an angle drawn from ``degrees`` (a range, or +-value). Same shape out."""

    def __init__(self, degrees: Range = 30.0, p: float = 1.0) -> None:
        super().__init__("RandomRotation", degrees=degrees, p=p, keepdim=True)


@transform("RandomAffine", "vision")
class RandomAffine(KorniaTransform):
    """Random rotation, translation (fractions), scale and shear. Same shape out."""

    def __init__(
        self,
        degrees: Range = 15.0,
        translate: tuple[float, float] | None = (0.1, 0.1),
        scale: tuple[float, float] | None = (0.9, 1.1),
        shear: Range | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(
            "RandomAffine", degrees=degrees, translate=translate, scale=scale, shear=shear, p=p, keepdim=True
        )


@transform("RandomPerspective", "vision")
class RandomPerspective(KorniaTransform):
    """Random perspective warp with corner displacement up to ``distortion_scale``. Same shape out."""

    def __init__(self, distortion_scale: float = 0.3, p: float = 1.0) -> None:
        super().__init__("RandomPerspective", distortion_scale=distortion_scale, p=p, keepdim=True)


@transform("RandomResizedCrop", "vision")
class RandomResizedCrop(KorniaTransform):
    """Crop a random area/aspect-ratio region and resize it to ``size``: ``(..., C, size, size)``."""

    preserves_shape = False

    def __init__(
        self, size: Size = 224, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
    ) -> None:
        super().__init__("RandomResizedCrop", size=_pair(size), scale=scale, ratio=ratio, keepdim=True)


@transform("RandomCrop", "vision")
class RandomCrop(KorniaTransform):
    """Crop a random ``size`` window (after optional zero ``padding``): ``(..., C, size, size)``."""

    preserves_shape = False

    def __init__(self, size: Size = 32, padding: int | None = None) -> None:
        super().__init__("RandomCrop", size=_pair(size), padding=padding, keepdim=True)


@transform("CenterCrop", "vision")
class CenterCrop(KorniaTransform):
    """Crop the central ``size`` window: ``(..., C, size, size)``. Deterministic."""

    random = False

    preserves_shape = False

    def __init__(self, size: Size = 224) -> None:
        super().__init__("CenterCrop", size=_pair(size), keepdim=True)


@transform("Resize", "vision")
class Resize(Transform):
    """Bilinear resize to ``size`` (antialiased when shrinking): ``(..., C, size, size)``. Deterministic."""

    random = False

    preserves_shape = False

    def __init__(self, size: Size = 224) -> None:
        self.size = _pair(size)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        batch = x if x.dim() == 4 else x.unsqueeze(0)
        out = F.interpolate(batch, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return out if x.dim() == 4 else out.squeeze(0)


@transform("RandomHorizontalFlip", "vision")
class RandomHorizontalFlip(KorniaTransform):
    """Mirror left-right with probability ``p``. Same shape out."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__("RandomHorizontalFlip", p=p, keepdim=True)


@transform("RandomVerticalFlip", "vision")
class RandomVerticalFlip(KorniaTransform):
    """Mirror top-bottom with probability ``p``. Same shape out."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__("RandomVerticalFlip", p=p, keepdim=True)


@transform("ColorJitter", "vision")
class ColorJitter(KorniaTransform):
    """Random brightness, contrast, saturation and hue (saturation/hue need 3 channels). Same shape out."""

    def __init__(
        self, brightness: Range = 0.0, contrast: Range = 0.0, saturation: Range = 0.0, hue: Range = 0.0, p: float = 1.0
    ) -> None:
        super().__init__("ColorJitter", brightness, contrast, saturation, hue, p=p, keepdim=True)


@transform("Grayscale", "vision")
class Grayscale(Transform):
    """RGB to luma (ITU-R 601), repeated to ``num_output_channels``: ``(..., k, H, W)``. Deterministic."""

    random = False

    preserves_shape = False

    def __init__(self, num_output_channels: int = 1) -> None:
        self.num_output_channels = num_output_channels

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(3, 1, 1)
        luma = (x * w).sum(dim=-3, keepdim=True)
        return luma.expand(*luma.shape[:-3], self.num_output_channels, *luma.shape[-2:]).contiguous()


@transform("GaussianNoise", "vision")
class GaussianNoise(Transform):
    """Add N(mean, sigma^2) noise to every pixel. Same shape out."""

    def __init__(self, sigma: float = 0.05, mean: float = 0.0, p: float = 1.0) -> None:
        self.sigma, self.mean, self.p = sigma, mean, p

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p < 1.0 and bool(torch.rand((), generator=generator) >= self.p):
            return x
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x + self.mean + self.sigma * noise


@transform("GaussianBlur", "vision")
class GaussianBlur(KorniaTransform):
    """Blur with an odd ``kernel_size`` and sigma drawn from ``sigma``. Same shape out."""

    def __init__(self, kernel_size: int = 5, sigma: tuple[float, float] = (0.1, 2.0), p: float = 1.0) -> None:
        super().__init__("RandomGaussianBlur", (kernel_size, kernel_size), sigma, p=p, keepdim=True)


@transform("RandomErasing", "vision")
class RandomErasing(KorniaTransform):
    """Erase a random rectangle (area fraction ``scale``) to ``value``. Same shape out."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.02, 0.33),
        ratio: tuple[float, float] = (0.3, 3.3),
        value: float = 0.0,
        p: float = 0.5,
    ) -> None:
        super().__init__("RandomErasing", scale=scale, ratio=ratio, value=value, p=p, keepdim=True)


@transform("RandomGamma", "vision")
class RandomGamma(KorniaTransform):
    """Gamma correction with gamma drawn from ``gamma`` (inputs in [0, 1]). Same shape out."""

    def __init__(self, gamma: tuple[float, float] = (0.7, 1.5), p: float = 1.0) -> None:
        super().__init__("RandomGamma", gamma=gamma, p=p, keepdim=True)


@transform("Normalize", "vision")
class Normalize(Transform):
    """``(x - mean) / std`` per channel. Same shape out. Deterministic."""

    random = False

    def __init__(self, mean: list[float] = [0.485, 0.456, 0.406], std: list[float] = [0.229, 0.224, 0.225]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError("mean and std need the same length and std > 0")
        self.mean, self.std = list(mean), list(std)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std


@transform("RandAugment", "vision")
class RandAugment(Transform):
    """kornia's RandAugment: ``n`` random ops at magnitude ``m`` (of 30); RGB ``(N, 3, H, W)`` or ``(3, H, W)``."""

    def __init__(self, n: int = 2, m: int = 10) -> None:
        self.n, self.m = n, m
        self._aug = importlib.import_module("kornia.augmentation.auto").RandAugment(n=n, m=m)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        with global_rng_from(generator):
            out = self._aug(x if x.dim() == 4 else x.unsqueeze(0))
        return out if x.dim() == 4 else out.squeeze(0)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return labels.float() if labels.dim() == 2 else F.one_hot(labels.long(), num_classes).float()


@transform("MixUp", "vision")
class MixUp(Transform):
    """Batch-level: ``lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(alpha, alpha)``; labels mixed alike.

    ``(images (N, ...), labels (N,) or (N, C)) -> (images, soft labels (N, num_classes))``.
    """

    batch_level = True

    def __init__(self, num_classes: int = 10, alpha: float = 0.2) -> None:
        self.num_classes, self.alpha = num_classes, alpha

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator | None = None):
        x, y = batch
        lam = _beta(self.alpha, generator)
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        soft = _one_hot(y, self.num_classes)
        return lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]


@transform("CutMix", "vision")
class CutMix(Transform):
    """Batch-level: paste a random box from a shuffled batch; labels mixed by the pasted area.

    ``(images (N, C, H, W), labels (N,) or (N, C)) -> (images, soft labels (N, num_classes))``.
    """

    batch_level = True

    def __init__(self, num_classes: int = 10, alpha: float = 1.0) -> None:
        self.num_classes, self.alpha = num_classes, alpha

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator | None = None):
        x, y = batch
        h, w = x.shape[-2:]
        lam = _beta(self.alpha, generator)
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (), generator=generator)), int(torch.randint(0, w, (), generator=generator))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        out = x.clone()
        out[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        area = (bottom - top) * (right - left) / (h * w)
        soft = _one_hot(y, self.num_classes)
        return out, (1 - area) * soft + area * soft[perm]


def _gamma(alpha: float, generator: torch.Generator | None) -> float:
    """Marsaglia-Tsang Gamma(alpha, 1) sample using ``generator`` (alpha < 1 via the boost trick)."""
    boost = 1.0
    if alpha < 1.0:
        boost = float(uniform(0.0, 1.0, generator)) ** (1.0 / alpha)
        alpha += 1.0
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        z = float(torch.randn((), generator=generator))
        v = (1.0 + c * z) ** 3
        if v <= 0:
            continue
        u = float(uniform(0.0, 1.0, generator))
        if math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
            return d * v * boost


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    """Beta(alpha, alpha) as X / (X + Y), X, Y ~ Gamma(alpha): torch.distributions takes no generator."""
    a, b = _gamma(alpha, generator), _gamma(alpha, generator)
    return a / (a + b)
