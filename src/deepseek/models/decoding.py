"""A running decode batch whose rows join and leave at token boundaries (continuous batching).

:class:`DecodeBatch` keeps one KV cache for every row: per block ``(k, v)``, each ``(N, heads, T, head_dim)``,
rows right-aligned (left padding), so the newest token of every row sits in the last column and one decode
step appends one column for all rows. Each row has its own length (its real tokens are its last ``length``
columns) and its own positions, so a row computes what it would alone: padding columns are masked out of
attention (``attention_mask``) and hold zeros. Rows that join are prefilled together (left-padded to their
longest prompt) and their cache is padded on the left to the batch's width (or the batch's to theirs);
rows that leave are dropped and the columns no row uses any more are cut off, so ``T`` is always the
longest row's length.

Written here because torch has no batched KV-cache decode with per-row lengths; the model side is one
``forward(ids, past, use_cache=True, positions=..., attention_mask=...)`` (:class:`PaddedDecoder`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepseek.models.language import Cache, pick_next

PAD_ID = 0  # the token fed at padding positions; masked, so any id in the vocabulary does


@runtime_checkable
class PaddedDecoder(Protocol):
    """A decoder that runs rows of different lengths in one batch (the built-in GPT-2 does).

    ``module(ids (N, L), past, use_cache=True, positions=(N, L) int64, attention_mask=(N, L_past + L) bool)``
    returns ``(logits (N, L, vocab), cache)`` with the cache a list of per-block ``(k, v)``, each
    ``(N, heads, L_past + L, head_dim)``; ``max_positions`` bounds a row's length."""

    max_positions: int

    def __call__(self, ids: torch.Tensor, past: Cache | None = None, use_cache: bool = False, *,
                 positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> Any: ...  # fmt: skip


def supports_padded_decode(module: Any) -> bool:
    """Whether ``module`` is a :class:`PaddedDecoder` (checked by its forward's parameters, as a Protocol only
    checks that attributes exist): ONNX sessions and exported programs are not, and stream one request alone."""
    forward = getattr(module, "forward", None)
    if not isinstance(module, nn.Module) or not isinstance(getattr(module, "max_positions", None), int):
        return False
    try:
        names = set(inspect.signature(forward).parameters)
    except (TypeError, ValueError):
        return False
    return {"past", "use_cache", "positions", "attention_mask"} <= names


def left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` padded with zeros at the start of ``dim`` to ``width`` entries."""
    short = width - t.shape[dim]
    if short <= 0:
        return t
    pads = [0, 0] * (t.ndim - 1 - dim) + [short, 0]
    return F.pad(t, pads)


class DecodeBatch:
    """The rows of one running decode and their KV cache; call it from one thread (the model's).

    ``prefill(prompts)`` adds rows and returns their next-token logits ``(k, vocab)``; ``step(tokens (N,))``
    feeds every row its last token and returns ``(N, vocab)``; ``keep(rows)`` drops the others. Row order
    is kept: new rows go last, dropped rows close up.
    """

    def __init__(self, model: nn.Module) -> None:
        if not supports_padded_decode(model):
            raise ValueError(f"model {type(model).__name__} has no forward(..., positions, attention_mask)")
        self.model = model
        # a forward that can skip the head at every prompt position but the last (GPT2's last_only)
        self.last_only = "last_only" in inspect.signature(model.forward).parameters
        self.cache: Cache | None = None
        self.lengths = torch.zeros(0, dtype=torch.long)  # (N,) real tokens per row
        self.forwards = 0  # forward passes run (prefills and steps)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        """``T``: cache columns (the longest row's length)."""
        return 0 if self.cache is None else int(self.cache[0][0].shape[2])

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def valid(self) -> torch.Tensor:
        """``(N, T)`` bool: True at each row's real tokens (its last ``length`` columns)."""
        cols = torch.arange(self.width, device=self.lengths.device)
        return cols[None, :] >= (self.width - self.lengths)[:, None]

    @torch.no_grad()
    def prefill(self, prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        """Add one row per prompt (``(L_i,)`` int64 each) -> next-token logits ``(len(prompts), vocab)``.

        The prompts run as one forward, left-padded to the longest; the batch is unchanged if it raises."""
        device = self._device()
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        if not len(prompts) or int(lengths.min()) < 1:
            raise ValueError(f"prefill needs prompts of at least one token, got lengths {lengths.tolist()}")
        width = int(lengths.max())
        ids = torch.stack([left_pad(p.to(device), width, 0) for p in prompts])
        cols = torch.arange(width)
        pad = (width - lengths)[:, None]
        valid = cols[None, :] >= pad
        positions = (cols[None, :] - pad).clamp(min=0)
        extra = {"last_only": True} if self.last_only else {}
        logits, cache = self.model(ids, None, use_cache=True, positions=positions.to(device),
                                   attention_mask=_unless_all(valid, device), **extra)  # fmt: skip
        self.forwards += 1
        self._merge(cache, lengths)
        return logits[:, -1]

    def _merge(self, cache: Cache, lengths: torch.Tensor) -> None:
        if self.cache is None:
            self.cache, self.lengths = [(k, v) for k, v in cache], lengths
            return
        width = max(self.width, int(cache[0][0].shape[2]))
        self.cache = [
            (torch.cat([left_pad(k0, width, 2), left_pad(k1, width, 2)]),
             torch.cat([left_pad(v0, width, 2), left_pad(v1, width, 2)]))
            for (k0, v0), (k1, v1) in zip(self.cache, cache, strict=True)
        ]  # fmt: skip
        self.lengths = torch.cat([self.lengths, lengths])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row its newest token (``tokens`` ``(N,)``) -> next-token logits ``(N, vocab)``."""
        if self.cache is None or tokens.shape != self.lengths.shape:
            raise ValueError(f"step needs one token per row ({len(self)}), got shape {tuple(tokens.shape)}")
        device = self._device()
        valid = torch.cat([self.valid(), torch.ones(len(self), 1, dtype=torch.bool)], dim=1)
        positions = self.lengths[:, None]
        logits, self.cache = self.model(tokens[:, None].to(device), self.cache, use_cache=True,
                                        positions=positions.to(device), attention_mask=_unless_all(valid, device))  # fmt: skip
        self.forwards += 1
        self.lengths = self.lengths + 1
        return logits[:, -1]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices, ascending); cut the columns no kept row uses."""
        if len(rows) == len(self):
            return
        if not rows or self.cache is None:
            self.cache, self.lengths = None, torch.zeros(0, dtype=torch.long)
            return
        index = torch.tensor(list(rows), dtype=torch.long)
        self.lengths = self.lengths[index]
        width = int(self.lengths.max())
        at = index.to(self.cache[0][0].device)
        self.cache = [(k.index_select(0, at)[:, :, -width:], v.index_select(0, at)[:, :, -width:]) for k, v in self.cache]


def _unless_all(valid: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The padding mask, or None when no row has padding (one row, or rows of equal length): the forward then
    takes the plain causal path, which is faster and gives the same logits."""
    return None if bool(valid.all()) else valid.to(device)


def pick_rows(logits: torch.Tensor, temperatures: Sequence[float], top_ks: Sequence[int | None],
              generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """Logits ``(N, vocab)`` -> next tokens ``(N,)`` on the CPU, each row with its own temperature and top-k
    (greedy rows share one argmax)."""
    out = logits.argmax(-1).cpu()
    for i, (t, k) in enumerate(zip(temperatures, top_ks, strict=True)):
        if t > 0:
            out[i] = pick_next(logits[i : i + 1], t, k, generator)[0].cpu()
    return out
