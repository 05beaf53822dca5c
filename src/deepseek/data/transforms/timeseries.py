"""Time-series transforms on ``(C, T)`` or ``(N, C, T)`` float tensors (Um et al. 2017 augmentations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepseek.data.transforms.base import Transform, transform


def _smooth_curve(
    shape: tuple[int, ...], length: int, knots: int, sigma: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Random curves ``(*shape, length)`` through ``knots + 2`` points ~ N(1, sigma^2), linearly interpolated."""
    points = 1.0 + sigma * torch.randn((*shape, knots + 2), generator=generator)
    flat = points.reshape(-1, 1, knots + 2)
    return F.interpolate(flat, size=length, mode="linear", align_corners=True).reshape(*shape, length)


@transform("Window", "timeseries")
class Window(Transform):
    """Cut ``(C, T)`` into windows of ``size`` every ``stride`` steps: ``(num_windows, C, size)``."""

    random = False

    preserves_shape = False

    def __init__(self, size: int = 64, stride: int = 32) -> None:
        self.size, self.stride = size, stride

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.shape[-1] < self.size:
            raise ValueError(f"series of length {x.shape[-1]} is shorter than the window {self.size}")
        return x.unfold(-1, self.size, self.stride).movedim(-2, 0).contiguous()


@transform("Standardize", "timeseries")
class Standardize(Transform):
    """Per channel: subtract the mean over time and divide by the std. Same shape. Deterministic."""

    random = False

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + self.eps)


@transform("Jitter", "timeseries")
class Jitter(Transform):
    """Add N(0, sigma^2) noise to every value. Same shape."""

    def __init__(self, sigma: float = 0.03) -> None:
        self.sigma = sigma

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x + self.sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@transform("Scaling", "timeseries")
class Scaling(Transform):
    """Multiply each channel by a factor ~ N(1, sigma^2). Same shape."""

    def __init__(self, sigma: float = 0.1) -> None:
        self.sigma = sigma

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        factor = 1.0 + self.sigma * torch.randn((*x.shape[:-1], 1), generator=generator, dtype=x.dtype)
        return x * factor.to(x.device)


@transform("MagnitudeWarp", "timeseries")
class MagnitudeWarp(Transform):
    """Multiply each channel by a smooth random curve through ``knots`` points ~ N(1, sigma^2). Same shape."""

    def __init__(self, sigma: float = 0.2, knots: int = 4) -> None:
        self.sigma, self.knots = sigma, knots

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        curve = _smooth_curve(tuple(x.shape[:-1]), x.shape[-1], self.knots, self.sigma, generator)
        return x * curve.to(x.dtype).to(x.device)


@transform("TimeWarp", "timeseries")
class TimeWarp(Transform):
    """Resample along time at smoothly varying speeds (a random monotone warp); endpoints stay. Same shape."""

    def __init__(self, sigma: float = 0.2, knots: int = 4) -> None:
        self.sigma, self.knots = sigma, knots

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        t = x.shape[-1]
        speed = _smooth_curve((), t, self.knots, self.sigma, generator).clamp_min(0.1)
        warped = torch.cumsum(speed, dim=-1)
        warped = (warped - warped[0]) / (warped[-1] - warped[0]) * (t - 1)  # monotone map [0, t-1] -> [0, t-1]
        lo = warped.floor().long().clamp(0, t - 2)
        frac = (warped - lo).to(x.dtype).to(x.device)
        lo = lo.to(x.device)
        return x[..., lo] * (1 - frac) + x[..., lo + 1] * frac
