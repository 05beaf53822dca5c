"""Speech recognition with CTC: sequences of spoken digits ("three one four") made from the real speech
of ``spoken_digits`` (espeak-ng + sox, generated once into the cache), with character transcripts.

Characters are :data:`ALPHABET` (space, then a-z: 27 ids), so a CTC model's blank is id 27 (the
Conformer's ``vocab_size: 27`` puts it last). Training and validation sequences are made from
disjoint recordings (split stratified by digit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from annotated_types import Gt
from torch.utils.data import Dataset

from deepseek.data.bundled import DIGITS, WaveformClassification, fit_length, read_wav, spoken_digits
from deepseek.data.datasets import DatasetSplits, Fraction
from deepseek.data.tasks.common import sample_generator
from deepseek.registry import register_dataset

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
SAMPLE_RATE = 16000


def encode_chars(text: str) -> list[int]:
    """Transcript -> character ids (index in :data:`ALPHABET`)."""
    return [ALPHABET.index(c) for c in text]


def decode_chars(ids: list[int] | torch.Tensor) -> str:
    """Character ids -> text; ids outside the alphabet (padding -1, the blank) are skipped."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return "".join(ALPHABET[i] for i in values if 0 <= i < len(ALPHABET))


def trim_silence(wave: torch.Tensor, threshold: float = 0.02) -> torch.Tensor:
    """``(1, T)`` cut to the span between the first and last sample louder than ``threshold``."""
    loud = (wave.abs() > threshold).any(0).nonzero()
    return wave[:, int(loud[0]) : int(loud[-1]) + 1] if len(loud) else wave


class SpokenDigitSequences(Dataset):
    """``(waveform (1, length), (char ids (max_chars,) padded with -1, length ()))``.

    Sample ``i`` joins 1..``max_digits`` recordings drawn from ``(seed, i)``, silence-trimmed, with
    50-150 ms pauses and up to 100 ms of lead-in; the same every epoch. Words that would overflow
    ``length`` are left out of both audio and transcript.
    """

    def __init__(self, items: list[tuple[Path, int]], size: int, max_digits: int, length: int, seed: int) -> None:
        self.items, self.size, self.max_digits, self.length, self.seed = items, size, max_digits, length, seed
        self.max_chars = max_digits * (max(len(w) for w in DIGITS) + 1) - 1

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        g = sample_generator(self.seed, i)
        count = int(torch.randint(1, self.max_digits + 1, (), generator=g))
        lead = int(torch.randint(0, SAMPLE_RATE // 10, (), generator=g))
        pieces, words, used = [torch.zeros(1, lead)], [], lead
        for k in torch.randint(0, len(self.items), (count,), generator=g).tolist():
            path, digit = self.items[k]
            clip = trim_silence(read_wav(path)[0].mean(0, keepdim=True))
            gap = int(torch.randint(SAMPLE_RATE // 20, SAMPLE_RATE * 3 // 20, (), generator=g))
            if used + clip.shape[1] > self.length:
                break
            pieces += [clip, torch.zeros(1, gap)]
            words.append(DIGITS[digit])
            used += clip.shape[1] + gap
        chars = encode_chars(" ".join(words))
        labels = torch.full((self.max_chars,), -1, dtype=torch.long)
        labels[: len(chars)] = torch.tensor(chars, dtype=torch.long)
        return fit_length(torch.cat(pieces, dim=1), self.length), (labels, torch.tensor(len(chars)))


@register_dataset("spoken_digit_sequences")
def spoken_digit_sequences(
    max_digits: Annotated[int, Gt(0)] = 3,
    train_size: Annotated[int, Gt(0)] = 2000,
    val_size: Annotated[int, Gt(0)] = 200,
    val_fraction: Fraction = 0.2,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DatasetSplits:
    """Spoken digit sequences with character transcripts for CTC: ``(waveform (1, T), (chars (S,), length))``.

    16 kHz, ``T`` = 0.8 s per digit of ``max_digits``; chars padded with -1. ``val_fraction`` of the
    360 recordings make the validation sequences.
    """
    clips = spoken_digits(val_fraction=val_fraction, seed=seed, cache_dir=cache_dir)  # generated once, cached
    length = int(0.8 * SAMPLE_RATE * max_digits)  # the longest word is ~0.6 s, a pause at most 0.15 s

    def pick(recordings: WaveformClassification, size: int, offset: int) -> SpokenDigitSequences:
        return SpokenDigitSequences(recordings.items, size, max_digits, length, seed * 2 + offset)

    return DatasetSplits(
        pick(clips.train, train_size, 0),
        pick(clips.val, val_size, 1) if clips.val is not None else None,
        None,
        (1, length),
        {"source": "espeak-ng+sox", "sample_rate": SAMPLE_RATE, "alphabet": ALPHABET, "blank": len(ALPHABET)},
    )
