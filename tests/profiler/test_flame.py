"""Flame graphs: Python stacks from a real profile, collapsed text, and a self-contained, deterministic SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from deepseek.profiler.flame import stack_profiler_kwargs, stacks_from_profile, write_collapsed, write_flamegraph

SVG = "{http://www.w3.org/2000/svg}"


def _profile(**kwargs) -> profile:
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with profile(activities=[ProfilerActivity.CPU], **kwargs) as prof:
        model(torch.randn(8, 16)).sum().backward()
    return prof


def test_stacks_carry_python_frames_and_operators():
    stacks = stacks_from_profile(_profile(**stack_profiler_kwargs()))
    addmm = [s for s in stacks if s[-1] == "aten::addmm"]
    assert addmm and all(v > 0 for v in stacks.values())
    assert any("test_flame.py" in frame for frame in addmm[0])  # the Python stack, root first, down to this test
    assert addmm[0].index("aten::linear") == len(addmm[0]) - 2  # the enclosing operator above the leaf
    assert any(s[-1] == "aten::mm" for s in stacks)  # backward ops too
    assert not any(re.search(r" at 0x[0-9a-f]+", f) for s in stacks for f in s)  # no run-dependent addresses
    with pytest.raises(ValueError, match="metric='wall'"):
        stacks_from_profile(_profile(**stack_profiler_kwargs()), metric="wall")


def test_stacks_need_verbose_profiling():
    # with_stack=True alone leaves FunctionEvent.stack empty (why prof.export_stacks writes an empty file)
    with pytest.raises(ValueError, match="verbose"):
        stacks_from_profile(_profile(with_stack=True))


STACKS = {("main", "forward", "aten::addmm"): 300.0, ("main", "forward", "aten::relu"): 100.0,
          ("main", "backward", "aten::mm"): 550.0, ("main", "a;b <odd> & name"): 50.0}  # fmt: skip


def test_collapsed_format(tmp_path):
    lines = write_collapsed(STACKS, tmp_path / "stacks.txt").read_text().splitlines()
    assert lines == ["main;a:b <odd> & name 50", "main;backward;aten::mm 550", "main;forward;aten::addmm 300",
                     "main;forward;aten::relu 100"]  # fmt: skip


def test_flamegraph_svg_frames_widths_and_no_network(tmp_path):
    path = write_flamegraph(STACKS, tmp_path / "fg.svg", title="ops <by stack>", unit="us")
    text = path.read_text()
    frames = {g.get("data-n"): g for g in ET.parse(path).getroot().iter(SVG + "g") if g.get("class") == "f"}
    expected = {"all", "main", "forward", "backward", "aten::addmm", "aten::relu", "aten::mm", "a;b <odd> & name"}
    assert set(frames) == expected
    width = {name: float(g.find(SVG + "rect").get("width")) + 0.5 for name, g in frames.items()}
    totals = {"all": 1000, "main": 1000, "forward": 400, "backward": 550, "aten::addmm": 300, "aten::relu": 100,
              "aten::mm": 550, "a;b <odd> & name": 50}  # fmt: skip
    for name, total in totals.items():
        assert width[name] == pytest.approx(width["all"] * total / 1000, abs=1e-2)
    assert "aten::mm (550.0 us, 55.00%)" == frames["aten::mm"].find(SVG + "title").text
    assert re.findall(r"https?://[^\"' ]+", text) == ["http://www.w3.org/2000/svg"]
    assert write_flamegraph(STACKS, tmp_path / "again.svg", title="ops <by stack>").read_text() == text


def test_flamegraph_rejects_negative_times(tmp_path):
    with pytest.raises(ValueError, match="negative value -1"):
        write_flamegraph({("a",): -1.0}, tmp_path / "bad.svg", title="bad")


def _event(name, parent=None, stack=(), device=DeviceType.CPU, python=False, cpu=0.0, dev=0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, stack=list(stack), device_type=device,
                           is_python_function=python, self_cpu_time_total=cpu, self_device_time_total=dev)  # fmt: skip


def test_device_time_goes_to_launching_operators_not_kernel_events():
    frame = _event("train.py(3): step", python=True)
    linear = _event("aten::linear", frame, ["train.py(3): step"], cpu=2.0, dev=0.0)
    addmm = _event("aten::addmm", linear, ["train.py(3): step"], cpu=5.0, dev=40.0)
    kernel = _event("sm90_gemm_kernel", device=DeviceType.CUDA, dev=40.0)  # already in addmm's device time
    prof = SimpleNamespace(events=lambda: [frame, linear, addmm, kernel])
    assert stacks_from_profile(prof, metric="self_device") == {
        ("train.py(3): step", "aten::linear", "aten::addmm"): 40.0
    }
    assert stacks_from_profile(prof) == {("train.py(3): step", "aten::linear"): 2.0,
                                         ("train.py(3): step", "aten::linear", "aten::addmm"): 5.0}  # fmt: skip
