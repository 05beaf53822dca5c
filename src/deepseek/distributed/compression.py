"""Compression state of the DDP hooks, keyed so that it survives DDP's bucket rebuild and a resume.

DDP hands hooks one flat buffer per *bucket*; error-feedback residuals (one per bucket, the buffer's length) and
PowerSGD's warm-start matrices (``P``: ``n x rank`` and ``Q``: ``m x rank`` per compressed ``n x m`` gradient, in
torch's ``powerSGD_hook`` memory order) live per bucket index. DDP rebuilds its buckets after its first iteration
(``_rebuild_buckets``), and a resumed run starts again from the initial layout, so bucket ``i`` after a resume
may hold other parameters than bucket ``i`` of the uninterrupted run. Hence :class:`BucketStates` keeps the
live per-bucket tensors together with each bucket's layout (parameter names and shapes) and converts them to
*per-parameter* pieces whenever the layout changes or a checkpoint is taken; a new layout is assembled from
those pieces. Per-parameter keys are the one form that is the same in every run, whatever the buckets.
Written here because torch's ``PowerSGDState`` keys everything by bucket index only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

Layout = tuple[tuple[str, ...], tuple[torch.Size, ...]]  # (parameter names, gradient shapes), in bucket order


def flat_pieces(layout: Layout) -> list[tuple[str, int]]:
    """(name, numel) of each parameter's slice of a flat bucket-length tensor, in memory order."""
    return [(name, shape.numel()) for name, shape in zip(*layout)]


def powersgd_pieces(layout: Layout, rank: int, min_compression_rate: float, which: str) -> list[tuple[str, int]]:
    """(name, numel) of each compressed gradient's slice of torch's P (``which='p'``) or Q memory, in the order
    ``powerSGD_hook`` lays them out (``batch_tensors_with_same_shape=False``): compressed tensors grouped by
    shape, groups in order of first appearance, bucket order inside a group."""
    groups: dict[tuple[int, int], list[tuple[str, int, int, int]]] = defaultdict(list)
    for name, shape in zip(*layout):
        n = shape[0] if len(shape) else 1
        m = shape.numel() // n if n else 0
        r = min(n, m, rank)
        if (n + m) * r * min_compression_rate < n * m:  # torch's _should_compress
            groups[(n, m)].append((name, n, m, r))
    out = []
    for members in groups.values():
        for name, n, m, r in members:
            out.append((name, (n if which == "p" else m) * r))
    return out


class BucketStates:
    """Live per-bucket tensors of several fields plus their per-parameter form (see the module docstring).

    ``fields``: field name -> (the live dict ``{bucket index: 1-D tensor}``, the function giving that field's
    per-parameter pieces of a layout). The live dicts may be owned by someone else (PowerSGD's state).
    """

    def __init__(self, fields: dict[str, tuple[dict[int, torch.Tensor], Callable[[Layout], list[tuple[str, int]]]]],
                 merge: Callable[[dict[str, torch.Tensor]], None] | None = None):
        self.fields = fields
        self.merge = merge  # applied in place to the pieces split off live tensors before they are stored
        self.layouts: dict[int, Layout] = {}
        self.stored: dict[str, dict[str, torch.Tensor]] = {f: {} for f in fields}

    def prepare(self, index: int, layout: Layout, lengths: dict[str, int] | None = None) -> bool:
        """Before bucket ``index`` with ``layout`` is processed: keep its live tensors if the layout is the known
        one; else move every live tensor to the per-parameter store and assemble this bucket's from it.
        ``lengths``: a field's live length when longer than its pieces (zero padding at the end). Returns whether
        the bucket's live tensors were (re)assembled."""
        if self.layouts.get(index) == layout:
            return False
        names = set(layout[0])
        if index in self.layouts or any(names & set(other[0]) for other in self.layouts.values()):
            self.flush()
        self.layouts[index] = layout
        for field, (live, pieces_of) in self.fields.items():
            pieces = pieces_of(layout)
            store = self.stored[field]
            live.pop(index, None)
            if pieces and all(name in store for name, _ in pieces):
                flat = torch.cat([store.pop(name).reshape(-1) for name, _ in pieces])
                extra = (lengths or {}).get(field, flat.numel()) - flat.numel()
                live[index] = torch.cat([flat, flat.new_zeros(extra)]) if extra > 0 else flat
        return True

    def per_parameter(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every field as ``{parameter name: tensor}`` (copies): stored pieces plus the split live tensors."""
        out = {f: {k: v.clone() for k, v in store.items()} for f, store in self.stored.items()}
        for field, (live, pieces_of) in self.fields.items():
            for index, tensor in live.items():
                if index in self.layouts:
                    out[field].update({k: v.clone() for k, v in _split(tensor, pieces_of(self.layouts[index]))})
        return out

    def load(self, per_parameter: dict[str, dict[str, torch.Tensor]]) -> None:
        for field, (live, _) in self.fields.items():
            live.clear()
            self.stored[field] = {k: v.clone() for k, v in per_parameter.get(field, {}).items()}
        self.layouts.clear()

    def flush(self) -> None:
        """Move every live tensor into the per-parameter store (through ``merge``) and forget the layouts."""
        for field, (live, pieces_of) in self.fields.items():
            split: dict[str, torch.Tensor] = {}
            for index, tensor in list(live.items()):
                if index in self.layouts:
                    split.update(_split(tensor, pieces_of(self.layouts[index])))
            if split and self.merge is not None:
                self.merge(split)
            self.stored[field].update(split)
            live.clear()
        self.layouts.clear()


def _split(flat: torch.Tensor, pieces: list[tuple[str, int]]) -> list[tuple[str, torch.Tensor]]:
    out, at = [], 0
    for name, numel in pieces:
        out.append((name, flat[at:at + numel]))
        at += numel
    return out


def rng_state(rng: np.random.RandomState) -> dict[str, object]:
    """A numpy ``RandomState``'s state as tensors/ints/floats (readable by ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = rng.get_state()
    return {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def set_rng_state(rng: np.random.RandomState, state: dict[str, object]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)  # type: ignore[union-attr]
    rng.set_state((state["kind"], keys, state["pos"], state["has_gauss"], state["gauss"]))
