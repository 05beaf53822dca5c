"""Generic loaders for a user's own data on disk: an image folder, a CSV/Parquet table, a JSONL text
file and a folder of WAV files. Class-per-subfolder layouts take labels from sorted folder names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from annotated_types import Ge, Gt, Lt
from torch.utils.data import Dataset, Subset, TensorDataset

from deepseek.data.bundled import fit_length, read_wav, split_texts
from deepseek.data.datasets import DatasetSplits, split_indices, stratified_split
from deepseek.data.transforms.audio_ops import resample
from deepseek.registry import register_dataset

Fraction = Annotated[float, Ge(0), Lt(1)]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class DataPathError(FileNotFoundError):
    """A data path the user gave (a dataset ``root`` or ``path``) that does not hold the data: a user
    error (the CLI prints one line), unlike a FileNotFoundError from inside the framework (a bug)."""


def existing_file(path: str | Path) -> Path:
    """``path`` as a Path; raises DataPathError when no such file exists."""
    if not Path(path).is_file():
        raise DataPathError(f"'{path}': no such file")
    return Path(path)


def class_folders(root: str | Path, suffixes: set[str]) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(file, class index)`` for every file with a matching suffix under ``root/<class>/``."""
    root = Path(root)
    if not root.is_dir():
        raise DataPathError(f"'{root}' is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    items = [
        (f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*")) if f.suffix.lower() in suffixes
    ]
    if not items:
        raise DataPathError(f"no {sorted(suffixes)} files under '{root}/<class>/'")
    return items, classes


class ImageFiles(Dataset):
    """``(image (C, size, size) float32 in [0, 1], label)`` read with Pillow; unreadable files raise."""

    def __init__(self, items: list[tuple[Path, int]], size: int, channels: int) -> None:
        self.items, self.size, self.channels = items, size, channels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        with Image.open(path) as img:
            img = img.convert("L" if self.channels == 1 else "RGB").resize((self.size, self.size))
            arr = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr.copy())
        return (t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)), label


class WavFiles(Dataset):
    """``(waveform (1, length) float32, label)``: each WAV file made mono, resampled from its own rate
    to ``sample_rate``, then trimmed or zero-padded to ``length``."""

    def __init__(self, items: list[tuple[Path, int]], sample_rate: int, length: int) -> None:
        self.items, self.sample_rate, self.length = items, sample_rate, length

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.items[i]
        wave_, rate = read_wav(path)
        mono = resample(wave_.mean(0, keepdim=True), rate, self.sample_rate)
        return fit_length(mono, self.length), label


@register_dataset("image_folder")
def image_folder(
    root: str, size: Annotated[int, Gt(0)] = 64, channels: int = 3, val_fraction: Fraction = 0.2, seed: int = 0
) -> DatasetSplits:
    """Images under ``root/<class>/``, resized to ``size``: ``(image (channels, size, size), label)``."""
    items, classes = class_folders(root, IMAGE_SUFFIXES)
    tr, va = split_indices([c for _, c in items], val_fraction, seed)
    full = ImageFiles(items, size, channels)
    return DatasetSplits(
        Subset(full, tr),
        Subset(full, va) if va else None,
        len(classes),
        (channels, size, size),
        {"classes": classes, "files": [str(p) for p, _ in items]},
    )


@register_dataset("wav_folder")
def wav_folder(
    root: str,
    duration_s: Annotated[float, Gt(0)] = 1.0,
    sample_rate: Annotated[int, Gt(0)] = 16000,
    val_fraction: Fraction = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """16-bit WAV files under ``root/<class>/``, each resampled from its own rate to ``sample_rate``:
    ``(waveform (1, T), label)``, T = sample_rate x duration_s."""
    items, classes = class_folders(root, {".wav"})
    tr, va = split_indices([c for _, c in items], val_fraction, seed)
    length = int(sample_rate * duration_s)
    pick = lambda ids: WavFiles([items[i] for i in ids], sample_rate, length)  # noqa: E731
    return DatasetSplits(
        pick(tr),
        pick(va) if va else None,
        len(classes),
        (1, length),
        {"classes": classes, "files": [str(p) for p, _ in items], "sample_rate": sample_rate},
    )


@register_dataset("table")
def table(
    path: str,
    target: str,
    features: list[str] | None = None,
    classification: bool = True,
    val_fraction: Fraction = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """A CSV or Parquet table: numeric ``features`` (default: every numeric column but ``target``) -> ``(features (F,), target)``.

    Classification targets (any values) become class indices in sorted order; otherwise float ``(1,)``.
    """
    import pandas as pd

    p = existing_file(path)
    frame = pd.read_parquet(p) if p.suffix.lower() in (".parquet", ".pq") else pd.read_csv(p)
    if target not in frame.columns:
        raise ValueError(f"{path}: no column '{target}'; columns: {', '.join(map(str, frame.columns))}")
    cols = features or [str(c) for c in frame.drop(columns=[target]).select_dtypes("number").columns]
    bad = [c for c in cols if c not in frame.columns or not pd.api.types.is_numeric_dtype(frame[c])]
    if bad or not cols:
        raise ValueError(f"{path}: features must be numeric columns; not usable: {bad or 'none found'}")
    x = torch.tensor(frame[cols].to_numpy(dtype=np.float32))
    info: dict[str, Any] = {"features": list(cols)}
    if classification:
        classes = sorted(frame[target].unique().tolist(), key=str)
        info["classes"] = [str(c) for c in classes]
        y = torch.tensor(frame[target].map({c: i for i, c in enumerate(classes)}).to_numpy(), dtype=torch.long)
        train, val = stratified_split(x, y, val_fraction, seed)
        return DatasetSplits(train, val, len(classes), (x.shape[1],), info)
    y = torch.tensor(frame[target].to_numpy(dtype=np.float32)).unsqueeze(-1)
    tr, va = split_indices([0] * len(y), val_fraction, seed)
    return DatasetSplits(
        TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]) if va else None, None, (x.shape[1],), info
    )


@register_dataset("jsonl_text")
def jsonl_text(
    path: str, text_key: str = "text", label_key: str = "label", val_fraction: Fraction = 0.2, seed: int = 0
) -> DatasetSplits:
    """One JSON object per line with ``text_key`` and ``label_key``: ``(text, class index)``; labels sorted."""
    texts, raw = [], []
    with existing_file(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                texts.append(str(rec[text_key]))
                raw.append(rec[label_key])
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{path}:{n}: not a JSON object with '{text_key}' and '{label_key}' ({exc})") from None
    classes = sorted({str(r) for r in raw})
    labels = [classes.index(str(r)) for r in raw]
    train, val = split_texts(texts, labels, val_fraction, seed)
    return DatasetSplits(train, val, len(classes), None, {"classes": classes})


def dataset_from_path(path: Path) -> DatasetSplits:
    """The generic loader for what ``path`` holds: ``<class>/`` folders of images or WAVs, a ``.jsonl``
    file (``text``/``label``), or a ``.csv``/``.parquet`` table with a ``label`` column; all data in ``train``."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix == ".jsonl":
        return jsonl_text(str(path), val_fraction=0.0)
    if path.is_file() and suffix in (".csv", ".parquet", ".pq"):
        return table(str(path), target="label", val_fraction=0.0)
    if path.is_dir():
        kinds = {f.suffix.lower() for f in path.glob("*/*") if f.is_file()}
        if kinds & IMAGE_SUFFIXES:
            return image_folder(str(path), val_fraction=0.0)
        if ".wav" in kinds:
            return wav_folder(str(path), val_fraction=0.0)
    raise ValueError(
        f"'{path}': expected <class>/ folders of images or .wav files, a .jsonl file, or a .csv/.parquet table"
    )
