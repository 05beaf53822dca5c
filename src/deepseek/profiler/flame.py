"""Flame graphs of operator time: stacks from a :class:`torch.profiler.profile`, collapsed text, and a
self-contained SVG.

Why ``prof.export_stacks`` comes out empty (torch 2.13): it writes only events whose ``.stack`` is non-empty,
and ``profile(with_stack=True)`` alone leaves ``FunctionEvent.stack`` empty for every event: the Python stack is
recorded (as python_function events) but copied onto the operator events only in verbose mode. Profile with
``with_stack=True, experimental_config=torch._C._profiler._ExperimentalConfig(verbose=True)`` (see
:func:`stack_profiler_kwargs`); then ``.stack`` holds the Python frames, innermost first. Events still without a
stack (e.g. ``AccumulateGrad``'s ops on the autograd engine) are keyed by their chain of parent events instead.

The SVG is written here by hand because no maintained Python library writes one without Perl (flamegraph.pl)
or a Rust binary (inferno); :func:`write_collapsed` gives the same stacks to those tools and to speedscope.
The file has no external references: inline style and script (click a frame to zoom, "Search" to highlight).
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stack_profiler_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``torch.profiler.profile`` that make events carry their Python stacks."""
    return {"with_stack": True, "experimental_config": torch._C._profiler._ExperimentalConfig(verbose=True)}


def _frame(name: str) -> str:
    """``;`` separates frames in the collapsed format; object addresses (``at 0x7f..``) differ run to run."""
    return _ADDRESS.sub("", name).replace(";", ":").replace("\n", " ")


def stacks_from_profile(prof: torch.profiler.profile, metric: str = "self_cpu") -> dict[tuple[str, ...], float]:
    """Self time in microseconds of each operator event (not Python-function events), keyed by its Python call
    stack (root first), then the enclosing operators, then the operator's name as the leaf. ``metric``:
    ``"self_cpu"`` or ``"self_device"`` (CUDA kernel time attributed to the launching operator)."""
    attr = {"self_cpu": "self_cpu_time_total", "self_device": "self_device_time_total"}.get(metric)
    if attr is None:
        raise ValueError(f"metric={metric!r}: expected 'self_cpu' or 'self_device'")
    # host-side operator events only: device kernels appear as events of their own, and their time is already in
    # the launching operator's self_device_time_total
    events = [e for e in prof.events() if not e.is_python_function and e.device_type == DeviceType.CPU]
    if events and not any(e.stack for e in events):
        raise ValueError("the profile has no Python stacks: profile with **stack_profiler_kwargs() (with_stack=True "
                         "and _ExperimentalConfig(verbose=True))")  # fmt: skip
    stacks: dict[tuple[str, ...], float] = defaultdict(float)
    for event in events:
        value = float(getattr(event, attr))
        if value <= 0:
            continue
        operators, parent = [event.name], event.cpu_parent
        while parent is not None and not (event.stack and parent.is_python_function):
            operators.append(parent.name)  # enclosing ops (aten::linear > aten::addmm), or the whole chain
            parent = parent.cpu_parent
        stacks[tuple(_frame(f) for f in [*reversed(event.stack), *reversed(operators)])] += value
    return dict(stacks)


def write_collapsed(stacks: Mapping[tuple[str, ...], float], path: Path | str) -> Path:
    """Brendan Gregg's collapsed format, ``frame;frame;leaf value`` per line (integer values, sorted)."""
    path = Path(path)
    lines = [f"{';'.join(_frame(f) for f in stack)} {round(v)}" for stack, v in sorted(stacks.items()) if round(v) > 0]
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


class _Node:
    def __init__(self, name: str) -> None:
        self.name, self.total, self.children = name, 0.0, {}


def _tree(stacks: Mapping[tuple[str, ...], float]) -> _Node:
    root = _Node("all")
    for stack, value in stacks.items():
        if value < 0:
            raise ValueError(f"stack {';'.join(stack)!r} has a negative value {value}: expected times >= 0")
        node = root
        node.total += value
        for name in stack:
            node = node.children.setdefault(name, _Node(name))
            node.total += value
    return root


_WIDTH, _ROW, _PAD, _TOP = 1200, 17, 10, 50
_SCRIPT = """
var frames = document.querySelectorAll('g.f');
function zoom(g) {
  var x0 = +g.dataset.x, w0 = +g.dataset.w, d0 = +g.dataset.d, k = (WIDTH - 2 * PAD) / w0;
  frames.forEach(function (f) {
    var x = +f.dataset.x, w = +f.dataset.w, d = +f.dataset.d, inside = x >= x0 - 1e-9 && x + w <= x0 + w0 + 1e-9;
    var show = d < d0 ? (x <= x0 + 1e-9 && x + w >= x0 + w0 - 1e-9) : inside;
    f.style.display = show ? '' : 'none';
    var r = f.querySelector('rect'), t = f.querySelector('text');
    var nx = d < d0 ? PAD : PAD + (x - x0) * k, nw = d < d0 ? WIDTH - 2 * PAD : w * k;
    r.setAttribute('x', nx); r.setAttribute('width', Math.max(nw - 0.5, 0));
    t.setAttribute('x', nx + 3); t.textContent = fit(f.dataset.n, nw);
  });
}
function fit(name, w) { var n = Math.floor((w - 6) / 7); return n < 3 ? '' : (name.length <= n ? name : name.slice(0, n - 2) + '..'); }
function search() {
  var re = prompt('Highlight frames matching (regular expression):'); if (re === null) return;
  var rx = new RegExp(re);
  frames.forEach(function (f) {
    var m = re !== '' && rx.test(f.dataset.n); f.querySelector('rect').style.fill = m ? 'rgb(230,0,230)' : ''; });
  document.getElementById('matched').textContent = re === '' ? '' : 'highlighted: /' + re + '/';
}
frames.forEach(function (f) { f.addEventListener('click', function () { zoom(f); }); });
"""


def write_flamegraph(
    stacks: Mapping[tuple[str, ...], float], path: Path | str, *, title: str, unit: str = "us"
) -> Path:
    """A self-contained SVG flame graph of ``stacks`` (frames root first -> value): the root "all" at the bottom,
    each frame as wide as its total, children sorted by name (the same input gives the same bytes)."""
    root = _tree(stacks)
    depth = max((len(s) for s in stacks), default=0) + 1
    height = _TOP + depth * _ROW + _PAD
    scale = (_WIDTH - 2 * _PAD) / root.total if root.total > 0 else 0.0
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="monospace" font-size="12">',
        "<style>g.f rect{stroke:white;stroke-width:0.5}g.f:hover rect{stroke:black}g.f{cursor:pointer}"
        ".b{cursor:pointer;fill:#0645ad}</style>",
        f'<rect width="{_WIDTH}" height="{height}" fill="#f8f8f0"/>',
        f'<text x="{_WIDTH / 2}" y="20" text-anchor="middle" font-size="16">{escape(title)}</text>',
        f'<text x="{_PAD}" y="40">total {root.total:,.1f} {escape(unit)}; click a frame to zoom</text>',
        f'<text class="b" x="{_WIDTH - 200}" y="40" onclick="zoom(frames[0])">Reset zoom</text>',
        f'<text class="b" x="{_WIDTH - 100}" y="40" onclick="search()">Search</text>',
        f'<text id="matched" x="{_WIDTH / 2}" y="40"></text>',
    ]

    def emit(node: _Node, x: float, d: int) -> None:
        w = node.total * scale
        y = height - _PAD - (d + 1) * _ROW
        share = node.total / root.total if root.total > 0 else 0.0
        hue = zlib.crc32(node.name.encode()) % 60  # red-orange-yellow, stable per name
        name = escape(node.name, quote=True)
        parts.append(
            f'<g class="f" data-n="{name}" data-x="{x:.3f}" data-w="{w:.3f}" data-d="{d}">'
            f"<title>{escape(node.name)} ({node.total:,.1f} {escape(unit)}, {share:.2%})</title>"
            f'<rect x="{_PAD + x:.3f}" y="{y}" width="{max(w - 0.5, 0):.3f}" height="{_ROW - 1}" '
            f'fill="hsl({hue},85%,{55 + d % 3 * 5}%)"/>'
            f'<text x="{_PAD + x + 3:.3f}" y="{y + _ROW - 5}">{escape(_fit(node.name, w))}</text></g>'
        )
        for child in sorted(node.children.values(), key=lambda c: c.name):
            emit(child, x, d + 1)
            x += child.total * scale

    emit(root, 0.0, 0)
    script = _SCRIPT.replace("WIDTH", str(_WIDTH)).replace("PAD", str(_PAD))
    parts.append(f"<script><![CDATA[{script}]]></script></svg>\n")
    path = Path(path)
    path.write_text("\n".join(parts))
    return path


def _fit(name: str, width: float) -> str:
    n = int((width - 6) // 7)
    return "" if n < 3 else name if len(name) <= n else name[: n - 2] + ".."
