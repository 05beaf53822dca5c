"""Every registered transform, parametrized over the registry: it runs on a sample of its modality,
keeps its declared contract (shape, dtype, device), is reproducible under a fixed seed, and (when
random) varies with the seed."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from deepseek.data.graph import Graph
from deepseek.data.transforms import build_transform
from deepseek.registry import transforms

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# Parameters that fit the small samples below (defaults otherwise).
PARAMS: dict[str, dict[str, Any]] = {
    "randomresizedcrop": {"size": 8}, "randomcrop": {"size": 8}, "centercrop": {"size": 8}, "resize": {"size": 8},
    "mixup": {"num_classes": 4}, "cutmix": {"num_classes": 4}, "specmix": {"num_classes": 4},
    "farthestpointsample": {"num_points": 16}, "window": {"size": 32, "stride": 16}, "randomtokenmask": {"p": 0.5},
    "randomdeletion": {"p": 0.4}, "randomswap": {"n": 2}, "truncatepad": {"max_length": 10},
    "colorjitter": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.1},
}  # fmt: skip
IDS = torch.tensor([101, 2023, 2003, 1037, 3231, 6251, 2005, 1996, 102])


def sample(name: str, device: str, batched: bool = False) -> Any:
    cls = transforms.get(name)
    g = torch.Generator().manual_seed(123)
    lead = (3,) if batched else ()
    if cls.batch_level:
        shape = (4, 1, 40, 50) if cls.modality == "audio" else (4, 3, 16, 16)
        return torch.rand(shape, generator=g).to(device), torch.tensor([0, 1, 2, 3], device=device)
    if cls.modality == "vision":
        return torch.rand((*lead, 3, 16, 16), generator=g).to(device)
    if cls.modality == "audio":
        return {"waveform": (0.1 * torch.randn((*lead, 1, 8000), generator=g)).to(device), "sample_rate": 16000}
    if cls.modality == "text":
        return "The Quick brown fox." if name in ("tokenize", "lowercase") else IDS.to(device)
    if cls.modality == "timeseries":
        return torch.randn((*lead, 2, 128), generator=g).to(device)
    if cls.modality == "graph":
        return Graph(torch.randn(5, 4, generator=g), torch.tensor([[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]])).to(device)
    return torch.randn((*lead, 64, 3), generator=g).to(device)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


def main_tensor(x: Any) -> Any:
    if isinstance(x, dict):
        return x.get("features", x.get("input_ids", x.get("waveform")))
    if isinstance(x, tuple):
        return x[0]
    if isinstance(x, Graph):
        return x.x
    return x


def run(name: str, x: Any, seed: int) -> Any:
    t = build_transform({"type": name, "params": PARAMS.get(name, {})})
    return t(x, torch.Generator().manual_seed(seed))


NAMES = transforms.names()


def test_at_least_47_transforms_across_six_modalities():
    modalities = {transforms.info(n)["modality"] for n in NAMES}
    assert len(NAMES) >= 47 and modalities == {"vision", "audio", "text", "timeseries", "graph", "pointcloud"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_transform_contract_and_determinism(name, device):
    cls = transforms.get(name)
    assert (cls.__doc__ or "").strip(), f"{name} needs a docstring stating its contract"
    x = sample(name, device)
    out = run(name, x, seed=0)
    assert same(out, run(name, x, seed=0)), "not reproducible under a fixed seed"
    xi, xo = main_tensor(x), main_tensor(out)
    if isinstance(xi, torch.Tensor):
        assert isinstance(xo, torch.Tensor) and xo.device.type == xi.device.type
        if xi.is_floating_point():
            assert xo.dtype == xi.dtype
        if cls.preserves_shape:
            assert xo.shape == xi.shape
    if cls.random:
        outs = [run(name, x, seed=s) for s in range(1, 6)]
        assert not all(same(out, o) for o in outs), "a random transform ignores its generator"
    else:
        assert same(out, run(name, x, seed=99))


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in NAMES
        if transforms.get(n).modality in ("vision", "timeseries", "pointcloud", "audio")
        and not transforms.get(n).batch_level
    ],
)
def test_transform_works_on_batches(name):
    x = sample(name, "cpu", batched=True)
    if name == "window":
        x = x[0]  # Window cuts one (C, T) series into a batch of windows
    out = main_tensor(run(name, x, seed=0))
    assert out.shape[0] == 3 or name == "window"
