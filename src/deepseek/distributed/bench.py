"""The collective benchmark: time, algorithm bandwidth and bus bandwidth per message size, as nccl-tests defines them.

For each op and size, on the current process group (gloo with CPU tensors, NCCL with CUDA tensors):

- size: bytes as nccl-tests counts them: the buffer (all-reduce, broadcast), the input (reduce-scatter,
  all-to-all), the output (all-gather); the element count (float32) is rounded down to a multiple of the
  world size where the op splits the buffer;
- time: mean seconds of one collective over the timed iterations (after warm-up), the maximum over ranks;
- algbw = size / time; busbw = algbw x factor: all-reduce 2(n-1)/n, reduce-scatter, all-gather and all-to-all
  (n-1)/n, broadcast 1 (:func:`bus_factor`): the bandwidth a ring uses per link, comparable across ops.

Big messages on CPU take tenths of a second, so a size is iterated until about ``budget_s`` seconds (at most
``iters`` times, at least once); every rank runs the same count, agreed from a probe's maximum over ranks.
Written by hand: torch has no collective benchmark (nccl-tests is a separate C program, for NCCL only).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist

OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "all_to_all")
ELEMENT_BYTES = 4  # float32
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30}
MAX_BYTES = 2**34  # 16 GiB: a larger message is a typo


@dataclass(frozen=True)
class Row:
    """One measured (op, size): ``nbytes`` as nccl-tests counts it, ``time_s`` (max over ranks of the mean)."""

    op: str
    nbytes: int
    count: int
    world: int
    iters: int
    time_s: float
    algbw: float  # bytes/s
    busbw: float  # bytes/s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bus_factor(op: str, world: int) -> float:
    """nccl-tests' bus-bandwidth factor of ``op`` on ``world`` ranks."""
    if op == "all_reduce":
        return 2.0 * (world - 1) / world
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (world - 1) / world
    if op == "broadcast":
        return 1.0
    raise ValueError(f"op: '{op}'; allowed: {', '.join(OPS)}")


def _parse_size(text: str, whole: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"--sizes '{whole}': '{text}' is not a size; allowed: a number of bytes with an optional "
                         "K, M or G (binary), e.g. 1K..256M or 4K,1M")  # fmt: skip
    value = int(match.group(1)) * _UNITS[match.group(2).upper()]
    if not 1 <= value <= MAX_BYTES:
        raise ValueError(f"--sizes '{whole}': {text} is out of range; allowed: 1 byte to 16G")
    return value


def parse_sizes(text: str) -> list[int]:
    """``"1K..256M"`` (doubling from the first to the last, both included) or ``"4K,64K,1M"`` -> bytes."""
    if ".." in text:
        lo_text, _, hi_text = text.partition("..")
        lo, hi = _parse_size(lo_text, text), _parse_size(hi_text, text)
        if lo > hi:
            raise ValueError(f"--sizes '{text}': the first size is larger than the last; allowed: LOW..HIGH")
        sizes = []
        while lo <= hi:
            sizes.append(lo)
            lo *= 2
        return sizes
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"--sizes '{text}': no size given; allowed: e.g. 1K..256M or 4K,1M")
    return [_parse_size(part, text) for part in parts]


def parse_ops(text: str) -> list[str]:
    """``"all_reduce,all_gather"`` or ``"all"`` -> op names, checked."""
    ops = list(OPS) if text.strip() == "all" else [op.strip() for op in text.split(",") if op.strip()]
    bad = [op for op in ops if op not in OPS]
    if bad or not ops:
        raise ValueError(f"--ops '{text}': unknown op {bad[0] if bad else '(none)'}; allowed: all or a comma list "
                         f"of {', '.join(OPS)}")  # fmt: skip
    return ops


def _element_count(op: str, nbytes: int, world: int) -> int:
    count = max(1, nbytes // ELEMENT_BYTES)
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        count = max(world, count - count % world)  # the buffer splits into one equal chunk per rank
    return count


def _collective(op: str, count: int, world: int, device: torch.device, group: Any) -> Any:
    """A function running one ``op`` on float32 buffers of ``count`` elements (the counted side)."""
    if op == "all_reduce":
        buf = torch.ones(count, device=device)
        return lambda: dist.all_reduce(buf, group=group)
    if op == "broadcast":
        buf = torch.ones(count, device=device)
        src = dist.get_global_rank(group, 0) if group is not None else 0
        return lambda: dist.broadcast(buf, src=src, group=group)
    if op == "all_gather":
        out, inp = torch.empty(count, device=device), torch.ones(count // world, device=device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.11+
        return lambda: gather(out, inp, group=group)
    if op == "reduce_scatter":
        out, inp = torch.empty(count // world, device=device), torch.ones(count, device=device)
        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor  # renamed in torch 2.11+
        return lambda: scatter(out, inp, group=group)
    if op == "all_to_all":
        out, inp = torch.empty(count, device=device), torch.ones(count, device=device)
        return lambda: dist.all_to_all_single(out, inp, group=group)
    raise ValueError(f"op: '{op}'; allowed: {', '.join(OPS)}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _max_over_ranks(value: float, device: torch.device, group: Any) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return float(t.item())


def _timed(fn: Any, n: int, device: torch.device, group: Any) -> float:
    """Seconds per call of ``fn`` over ``n`` back-to-back calls, started together (barrier), max over ranks."""
    dist.barrier(group=group)
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return _max_over_ranks((time.perf_counter() - start) / n, device, group)


def run_bench(
    ops: Sequence[str],
    sizes: Sequence[int],
    iters: int = 50,
    warmup: int = 5,
    group: Any = None,
    device: str | torch.device | None = None,
    budget_s: float = 0.2,
) -> list[Row]:
    """Time each op at each size on ``group`` (default: the world); every rank must call it alike.

    ``device``: default CUDA (this rank's current device) under NCCL, else CPU. Each (op, size) runs one
    warm-up call and a probe call; then ``n = clamp(budget_s / probe, 1, iters)`` timed calls after
    ``min(warmup, n)`` further warm-up calls. Returns the rows in (op, size) order, the same on every rank.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters/warmup: {iters}/{warmup}; allowed: iters >= 1, warmup >= 0")
    world = dist.get_world_size(group)
    if device is None:
        device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend(group) == "nccl" else "cpu"
    dev = torch.device(device)
    rows = []
    for op in ops:
        for nbytes in sizes:
            count = _element_count(op, nbytes, world)
            fn = _collective(op, count, world, dev, group)
            fn()  # first call: buffers, connections, allocator
            probe = _timed(fn, 1, dev, group)
            n = max(1, min(iters, math.floor(budget_s / max(probe, 1e-9))))
            for _ in range(min(warmup, n)):
                fn()
            seconds = _timed(fn, n, dev, group)
            counted = count * ELEMENT_BYTES
            algbw = counted / seconds
            rows.append(Row(op, counted, count, world, n, seconds, algbw, algbw * bus_factor(op, world)))
            del fn
    return rows


def _human(nbytes: float) -> str:
    for unit, scale in (("G", 2**30), ("M", 2**20), ("K", 2**10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return str(int(nbytes))


def format_table(rows: Sequence[Row], backend: str = "") -> str:
    """The rows as nccl-tests prints them: size, count, time (us), algbw and busbw (GB/s, 1e9 bytes/s)."""
    world = rows[0].world if rows else 0
    lines = [f"collective benchmark: {world} ranks{', ' + backend if backend else ''}, float32; time = mean per "
             "call, max over ranks; busbw = algbw x bus factor (nccl-tests)",
             f"{'op':>15}{'size':>9}{'count':>12}{'iters':>7}{'time (us)':>13}{'algbw GB/s':>12}{'busbw GB/s':>12}"]  # fmt: skip
    for r in rows:
        lines.append(f"{r.op:>15}{_human(r.nbytes):>9}{r.count:>12}{r.iters:>7}{r.time_s * 1e6:>13.1f}"
                     f"{r.algbw / 1e9:>12.3f}{r.busbw / 1e9:>12.3f}")  # fmt: skip
    return "\n".join(lines)
