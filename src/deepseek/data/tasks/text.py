"""Text generation tasks over every English conversation of ``chatterbot-corpus`` (~205 kB, 2,026
conversations), at byte level so no tokenizer is needed: ids ``0`` pad, ``1`` begin, ``2`` end and
``3 + byte`` for the UTF-8 bytes (:data:`BYTE_VOCAB` = 259 ids).

- ``chatterbot_lm``: next-byte language modelling (GPT-2);
- ``chatterbot_pairs``: each line -> the reply that follows it in its conversation (seq2seq).

Splits are by conversation (seeded), so no validation text is seen in training.
"""

from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Gt
from torch.utils.data import Dataset

from deepseek.data.bundled import read_chatterbot
from deepseek.data.datasets import DatasetSplits, Fraction
from deepseek.data.tasks.common import bad_data_value, seeded_split
from deepseek.registry import register_dataset

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3
BYTE_VOCAB = 256 + BYTE_OFFSET
IGNORE_INDEX = -100  # target positions the token losses skip


def encode_bytes(text: str) -> list[int]:
    """``text`` as byte-level ids (``3 + byte`` of its UTF-8 encoding)."""
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]


def decode_bytes(ids: list[int] | torch.Tensor) -> str:
    """Byte-level ids back to text; special and padding ids (< 3, or -100) are skipped."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return bytes(i - BYTE_OFFSET for i in values if BYTE_OFFSET <= i < BYTE_VOCAB).decode("utf-8", errors="replace")


def chatterbot_conversations() -> list[list[str]]:
    """Every English conversation of chatterbot-corpus as its lines, files in sorted order."""
    return [lines for topic in read_chatterbot(dataset="chatterbot_lm").values() for lines in topic]


class TokenWindows(Dataset):
    """Consecutive windows of one id stream: ``(ids (seq_len,), next ids (seq_len,))``, ``stride`` apart."""

    def __init__(self, ids: torch.Tensor, seq_len: int, stride: int) -> None:
        if len(ids) < seq_len + 1:
            raise bad_data_value("seq_len", seq_len, f"below {len(ids)}, the length of this split's text in bytes")
        self.ids, self.seq_len, self.stride = ids, seq_len, stride

    def __len__(self) -> int:
        return (len(self.ids) - self.seq_len - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.stride
        chunk = self.ids[start : start + self.seq_len + 1]
        return chunk[:-1], chunk[1:]


def _stream(conversations: list[list[str]]) -> torch.Tensor:
    """Lines joined by newlines, conversations by blank lines, as one id stream (N,)."""
    text = "\n\n".join("\n".join(lines) for lines in conversations)
    return torch.tensor(encode_bytes(text), dtype=torch.long)


@register_dataset("chatterbot_lm")
def chatterbot_lm(
    seq_len: Annotated[int, Gt(0)] = 128,
    stride: Annotated[int, Gt(0)] | None = None,
    val_fraction: Fraction = 0.1,
    seed: int = 0,
) -> DatasetSplits:
    """Byte-level LM on chatterbot-corpus: ``(ids (seq_len,), next ids (seq_len,))`` int64, vocab 259.

    Windows start ``stride`` bytes apart (default ``seq_len``: no overlap); the target is the window
    moved on by one byte, so ``token_cross_entropy`` is the next-token loss.
    """
    conversations = chatterbot_conversations()
    train, val = seeded_split(len(conversations), val_fraction, seed)
    step = stride or seq_len
    pick = lambda ids: TokenWindows(_stream([conversations[i] for i in ids]), seq_len, step)  # noqa: E731
    return DatasetSplits(
        pick(train),
        pick(val) if val else None,
        None,
        (seq_len,),
        {"source": "chatterbot-corpus", "vocab_size": BYTE_VOCAB, "pad_id": PAD},
    )


class ReplyPairs(Dataset):
    """``((source ids (L,), target-input ids (L,)), target ids (L,))`` for teacher forcing.

    Target input is ``BOS + reply``, target is ``reply + EOS``; sources pad with ``PAD``, targets with
    ``IGNORE_INDEX`` (so the loss skips them). Replies longer than ``L - 1`` bytes are cut.
    """

    def __init__(self, pairs: list[tuple[str, str]], max_length: int) -> None:
        self.pairs, self.max_length = pairs, max_length

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        line, reply = self.pairs[i]
        n = self.max_length
        src = encode_bytes(line)[:n]
        body = encode_bytes(reply)[: n - 1]
        tgt_in, tgt_out = [BOS, *body], [*body, EOS]
        pad = lambda ids, value: torch.tensor(ids + [value] * (n - len(ids)), dtype=torch.long)  # noqa: E731
        return (pad(src, PAD), pad(tgt_in, PAD)), pad(tgt_out, IGNORE_INDEX)


@register_dataset("chatterbot_pairs")
def chatterbot_pairs(
    max_length: Annotated[int, Gt(1)] = 64, val_fraction: Fraction = 0.1, seed: int = 0
) -> DatasetSplits:
    """Line -> reply pairs of chatterbot-corpus conversations for seq2seq, byte ids padded to ``max_length``.

    Samples (2,306 pairs in all): ``((source (L,), BOS + reply (L,)), reply + EOS (L,))`` int64; vocab
    259, pad 0, target padding -100 (teacher forcing: the model sees the reply shifted right).
    """
    conversations = chatterbot_conversations()
    train, val = seeded_split(len(conversations), val_fraction, seed)

    def pick(ids: list[int]) -> ReplyPairs:
        return ReplyPairs([(c[k], c[k + 1]) for c in (conversations[i] for i in ids) for k in range(len(c) - 1)],
                          max_length)  # fmt: skip

    return DatasetSplits(
        pick(train),
        pick(val) if val else None,
        None,
        (max_length,),
        {"source": "chatterbot-corpus", "vocab_size": BYTE_VOCAB, "pad_id": PAD, "bos_id": BOS, "eos_id": EOS},
    )
