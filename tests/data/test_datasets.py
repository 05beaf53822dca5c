"""Every registered dataset loads offline; generic loaders read what users put on disk."""

from __future__ import annotations

import hashlib
import json
import shutil
import wave

import numpy as np
import pytest
import torch

from deepseek.data import build_dataset
from deepseek.data.bundled import synthesize_spoken_digits
from deepseek.registry import datasets

NEEDS_TOOLS = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="spoken_digits needs espeak-ng and sox (CI installs them: apt-get install espeak-ng sox)",
)
BUILTIN = {
    "digits": (1437, 360, 10), "iris": (120, 30, 3), "wine": (142, 36, 3), "breast_cancer": (455, 114, 2),
    "diabetes": (354, 88, None), "mnist": (4000, 1000, 10), "chatterbot_topics": (1160, 291, 10),
    "synthetic_classification": (1638, 410, 4),
}  # fmt: skip


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "mnist" else n for n in sorted(BUILTIN)]
)
def test_bundled_dataset_loads_offline_with_seeded_stratified_splits(name):
    splits = build_dataset(name)
    n_train, n_val, classes = BUILTIN[name]
    assert (len(splits.train), len(splits.val), splits.num_classes) == (n_train, n_val, classes)
    x, y = splits.train[0]
    assert isinstance(x, (torch.Tensor, str))
    again = build_dataset(name)
    assert [again.val[i][1] for i in range(5)] == [splits.val[i][1] for i in range(5)]


@pytest.mark.slow
@NEEDS_TOOLS
def test_spoken_digits_are_generated_the_same_every_time(tmp_path):
    a = synthesize_spoken_digits(tmp_path / "a")
    b = synthesize_spoken_digits(tmp_path / "b")
    assert len(a) == 360
    digest = lambda items: hashlib.sha256(b"".join(p.read_bytes() for p, _ in items)).hexdigest()  # noqa: E731
    assert digest(a) == digest(b)
    splits = build_dataset("spoken_digits", cache_dir=str(tmp_path / "a"))
    x, y = splits.train[0]
    assert x.shape == (1, 16000) and x.abs().max() > 0.01 and len(splits.val) == 72


def write_wav(path, samples: np.ndarray, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes((samples * 32767).astype("<i2").tobytes())


def test_generic_loaders(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / "img" / c).mkdir(parents=True)
        (tmp_path / "wav" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((12, 10, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "img" / c / f"{i}.png")
            write_wav(tmp_path / "wav" / c / f"{i}.wav", np.sin(np.arange(8000) * (0.01 + i * 0.01)))
    img = build_dataset("image_folder", root=str(tmp_path / "img"), size=16, val_fraction=0.2)
    assert img.num_classes == 2 and img.train[0][0].shape == (3, 16, 16) and len(img.train) + len(img.val) == 10
    wav = build_dataset("wav_folder", root=str(tmp_path / "wav"), duration_s=1.0)
    assert wav.train[0][0].shape == (1, 16000) and wav.info["classes"] == ["cat", "dog"]

    rows = "a,b,label\n" + "".join(f"{i},{i * 2},{'yes' if i % 2 else 'no'}\n" for i in range(20))
    (tmp_path / "t.csv").write_text(rows)
    tab = build_dataset("table", path=str(tmp_path / "t.csv"), target="label")
    assert tab.num_classes == 2 and tab.train[0][0].shape == (2,) and tab.info["classes"] == ["no", "yes"]
    import pandas as pd

    pd.read_csv(tmp_path / "t.csv").to_parquet(tmp_path / "t.parquet")
    assert len(build_dataset("table", path=str(tmp_path / "t.parquet"), target="b", classification=False).train) == 16

    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"text": f"sample {i}", "label": ["x", "y"][i % 2]}) + "\n" for i in range(10))
    )
    text = build_dataset("jsonl_text", path=str(tmp_path / "t.jsonl"))
    assert text.num_classes == 2 and isinstance(text.train[0][0], str)


def test_every_registered_dataset_is_covered():
    from tests.data.test_task_datasets import COVERED  # the task datasets and `subset`, tested there

    covered = set(BUILTIN) | {"spoken_digits", "image_folder", "wav_folder", "table", "jsonl_text"} | set(COVERED)
    assert set(datasets.names()) == covered


def test_chatterbot_topics_keeps_a_bare_string_conversation_whole():
    """trivia.yml has one conversation that is a bare string, not a list of lines: iterating it gave
    one single-character "utterance" per letter."""
    pytest.importorskip("chatterbot_corpus")
    splits = build_dataset("chatterbot_topics", val_fraction=0.2)
    texts = [t for ds_ in (splits.train, splits.val) for t, _ in ds_]
    assert not {"b", "g", "w", "k", "p"} & set(texts)  # letters of that line, which no real answer is
    assert any(t.startswith("In a game of bingo") for t in texts)
