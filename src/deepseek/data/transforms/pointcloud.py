"""Point-cloud transforms on ``(P, D)`` or ``(N, P, D)`` tensors whose first 3 columns are xyz
(further columns, e.g. normals or colours, ride along untouched unless stated)."""

from __future__ import annotations

import math

import torch

from deepseek.data.transforms.base import Transform, transform, uniform


def _rotation(axis: str, max_degrees: float, generator: torch.Generator | None) -> torch.Tensor:
    """A random rotation ``(3, 3)``: about z by up to ``max_degrees``, or uniformly over SO(3) for ``any``."""
    if axis == "any":
        q = torch.randn(4, generator=generator, dtype=torch.float64)
        w, x, y, z = (q / q.norm()).tolist()
        return torch.tensor(
            [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
             [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
             [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]]
        )  # fmt: skip
    a = math.radians(float(uniform(-max_degrees, max_degrees, generator)))
    c, s = math.cos(a), math.sin(a)
    rot = {
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
    }
    return torch.tensor(rot[axis], dtype=torch.float64)


@transform("RandomRotation3D", "pointcloud")
class RandomRotation3D(Transform):
    """Rotate xyz (and normals in columns 3:6 when ``rotate_normals``) about ``axis`` or uniformly (``any``). Same shape."""

    def __init__(self, axis: str = "z", max_degrees: float = 180.0, rotate_normals: bool = False) -> None:
        if axis not in ("x", "y", "z", "any"):
            raise ValueError(f"axis must be x, y, z or any; got {axis!r}")
        self.axis, self.max_degrees, self.rotate_normals = axis, max_degrees, rotate_normals

    def __call__(self, pts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        r = _rotation(self.axis, self.max_degrees, generator).to(pts.dtype).to(pts.device)
        out = pts.clone()
        out[..., :3] = pts[..., :3] @ r.T
        if self.rotate_normals and pts.shape[-1] >= 6:
            out[..., 3:6] = pts[..., 3:6] @ r.T
        return out


@transform("Jitter3D", "pointcloud")
class Jitter3D(Transform):
    """Add N(0, sigma^2) noise clipped to +-clip to xyz. Same shape."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05) -> None:
        self.sigma, self.clip = sigma, clip

    def __call__(self, pts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = (self.sigma * torch.randn((*pts.shape[:-1], 3), generator=generator)).clamp(-self.clip, self.clip)
        out = pts.clone()
        out[..., :3] += noise.to(pts.dtype).to(pts.device)
        return out


@transform("RandomScale3D", "pointcloud")
class RandomScale3D(Transform):
    """Scale xyz by one factor drawn from ``[low, high]`` (per axis when ``anisotropic``). Same shape."""

    def __init__(self, low: float = 0.8, high: float = 1.25, anisotropic: bool = False) -> None:
        self.low, self.high, self.anisotropic = low, high, anisotropic

    def __call__(self, pts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        factor = uniform(self.low, self.high, generator, (3,) if self.anisotropic else (1,))
        out = pts.clone()
        out[..., :3] = pts[..., :3] * factor.to(pts.dtype).to(pts.device)
        return out


@transform("FarthestPointSample", "pointcloud")
class FarthestPointSample(Transform):
    """Keep ``num_points`` points, each the farthest from those already kept (PointNet++): ``(P, D) -> (num_points, D)``.

    The first point is drawn from ``generator``; the rest is deterministic.
    """

    preserves_shape = False

    def __init__(self, num_points: int = 512) -> None:
        self.num_points = num_points

    def __call__(self, pts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if pts.dim() == 3:
            return torch.stack([self(p, generator) for p in pts])
        n = pts.shape[0]
        if self.num_points >= n:
            return pts
        xyz = pts[:, :3]
        chosen = torch.empty(self.num_points, dtype=torch.long, device=pts.device)
        chosen[0] = int(torch.randint(0, n, (), generator=generator))
        dist = torch.full((n,), float("inf"), device=pts.device, dtype=xyz.dtype)
        for i in range(1, self.num_points):
            dist = torch.minimum(dist, (xyz - xyz[chosen[i - 1]]).pow(2).sum(-1))
            chosen[i] = torch.argmax(dist)
        return pts[chosen]


@transform("NormalizeUnitSphere", "pointcloud")
class NormalizeUnitSphere(Transform):
    """Centre xyz on its centroid and scale it into the unit sphere. Same shape. Deterministic."""

    random = False

    def __call__(self, pts: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        out = pts.clone()
        xyz = pts[..., :3] - pts[..., :3].mean(dim=-2, keepdim=True)
        radius = xyz.norm(dim=-1).amax(dim=-1, keepdim=True).clamp_min(1e-12)
        out[..., :3] = xyz / radius.unsqueeze(-1)
        return out
