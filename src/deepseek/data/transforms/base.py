"""Transforms and pipelines: seeded, picklable, built from callables, registered names or dict specs.

A transform is any callable ``t(x, generator=None)``; registered ones subclass :class:`Transform`
and draw every random number from ``generator``. :class:`Pipeline` hands each step a generator
seeded for that call: from ``seed=`` when the caller gives one (DistributedDataset derives it from
``(seed, epoch, sample index)``, so augmentations do not depend on which worker ran them), else from
the pipeline's own generator.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from deepseek.components import ComponentErrors, validate_kwargs
from deepseek.registry import RegistryError, register_transform, transforms

MODALITIES = ("vision", "audio", "text", "timeseries", "graph", "pointcloud")


class TransformError(ValueError):
    """An unknown transform name or a bad parameter, naming the transform and what is allowed."""


class Transform:
    """Base of registered transforms. Subclasses implement ``__call__(x, generator=None)``.

    Class attributes state the contract the registry-wide tests check: ``modality``;
    ``preserves_shape`` (output shape == input shape); ``batch_level`` (needs a batch, e.g. CutMix);
    ``random`` (draws from the generator).
    """

    modality: str = "any"
    preserves_shape: bool = True
    batch_level: bool = False
    random: bool = True  # False: the output depends on the input alone

    def __call__(self, x: Any, generator: torch.Generator | None = None) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def transform(name: str, modality: str) -> Callable[[type], type]:
    """Register a Transform subclass under ``name`` for ``modality``."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")

    def decorator(cls: type) -> type:
        cls.modality = modality
        return register_transform(name, modality=modality)(cls)

    return decorator


def uniform(low: float, high: float, generator: torch.Generator | None, size: Sequence[int] = ()) -> torch.Tensor:
    """Uniform samples in ``[low, high)`` drawn from ``generator`` (CPU)."""
    return low + (high - low) * torch.rand(tuple(size), generator=generator)


def chance(p: float, generator: torch.Generator | None) -> bool:
    return p >= 1.0 or (p > 0.0 and bool(torch.rand((), generator=generator) < p))


@contextlib.contextmanager
def global_rng_from(generator: torch.Generator | None) -> Iterator[None]:
    """Seed torch's global RNG from ``generator`` for code that draws from it (kornia), then restore it."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_transform(spec: Any) -> Callable[..., Any]:
    """A transform from a callable, a registered name, or ``{'type': Name, 'params': {...}}``."""
    if callable(spec) and not isinstance(spec, (str, dict)):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise TransformError(
            f"a pipeline step must be a callable, a transform name or {{'type': ..., 'params': ...}}; got {spec!r}"
        )
    unknown = set(spec) - {"type", "params"}
    if unknown:
        raise TransformError(f"transform spec {spec!r}: unknown keys {sorted(unknown)}; allowed: type, params")
    name, params = spec["type"], dict(spec.get("params") or {})
    try:
        checked = validate_kwargs(transforms, name, params)
    except ComponentErrors as exc:
        problems = "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in exc.errors)
        allowed = f" (parameters of {name}: {', '.join(exc.allowed) or 'none'})" if exc.allowed else ""
        raise TransformError(f"transform '{name}': {problems}{allowed}") from None
    try:
        return transforms.get(name)(**checked)
    except (ValueError, TypeError, RegistryError) as exc:
        raise TransformError(f"transform '{name}' with {params}: {exc}") from None


def _accepts_generator(fn: Callable[..., Any]) -> bool:
    if isinstance(fn, Transform) or isinstance(fn, Pipeline):
        return True
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class Pipeline:
    """A seeded sequence of transforms, usable as a DataLoader ``collate_fn`` or a dataset transform.

    >>> Pipeline([{'type': 'GaussianNoise', 'params': {'sigma': 0.05}}], seed=0)(torch.zeros(3, 8, 8)).shape
    torch.Size([3, 8, 8])
    """

    def __init__(self, steps: Sequence[Any], seed: int | None = 0) -> None:
        self.steps = [build_transform(s) for s in steps]
        self._wants_generator = [_accepts_generator(s) for s in self.steps]
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, x: Any, generator: torch.Generator | None = None, *, seed: int | None = None) -> Any:
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        elif generator is None:
            generator = self._generator
        for step, wants in zip(self.steps, self._wants_generator):
            x = step(x, generator) if wants else step(x)
        return x

    def __len__(self) -> int:
        return len(self.steps)

    def split(self) -> tuple[Pipeline | None, Pipeline | None]:
        """``(per-sample steps, batch-level steps)`` as two pipelines with this seed (None where empty).

        Batch-level steps (``batch_level = True``: MixUp, CutMix, SpecMix) take a collated
        ``(inputs (N, ...), targets (N,))`` batch, so they run after collate; they must therefore
        come after every per-sample step.
        """
        is_batch = [bool(getattr(s, "batch_level", False)) for s in self.steps]
        first = is_batch.index(True) if True in is_batch else len(self.steps)
        if not all(is_batch[first:]):
            later = next(s for s, b in zip(self.steps[first:], is_batch[first:]) if not b)
            raise TransformError(
                f"pipeline: the batch-level transform {type(self.steps[first]).__name__} must come after every "
                f"per-sample step, but {type(later).__name__} follows it"
            )
        per_sample, batch = self.steps[:first], self.steps[first:]
        return (
            Pipeline(per_sample, seed=self.seed) if per_sample else None,
            Pipeline(batch, seed=self.seed) if batch else None,
        )

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(s) for s in self.steps)
        return f"Pipeline([\n  {inner}\n], seed={self.seed})"

    def __getstate__(self) -> dict[str, Any]:  # generators do not pickle; rebuild from seed
        state = dict(self.__dict__)
        state["_generator"] = None if state["_generator"] is None else state["_generator"].get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        gen_state = state.pop("_generator")
        self.__dict__.update(state)
        self._generator = None
        if gen_state is not None:
            self._generator = torch.Generator()
            self._generator.set_state(gen_state)
