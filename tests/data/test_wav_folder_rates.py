"""``wav_folder`` resamples each file from its own sample rate to the dataset's ``sample_rate``."""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from deepseek.data import build_dataset


def write_tone(path: Path, rate: int, freq: float = 440.0, seconds: float = 1.0) -> None:
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.5 * np.sin(2 * math.pi * freq * t) * 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


@pytest.mark.parametrize("dataset_rate", [16000, 8000])
def test_files_at_8_and_16_khz_come_out_at_the_dataset_rate(tmp_path, dataset_rate):
    write_tone(tmp_path / "a" / "low.wav", 8000)
    write_tone(tmp_path / "b" / "high.wav", 16000)
    splits = build_dataset("wav_folder", root=str(tmp_path), sample_rate=dataset_rate, val_fraction=0.0)
    waves = {label: w for w, label in (splits.train[i] for i in range(len(splits.train)))}
    assert set(waves) == {0, 1}
    want = torch.tensor(0.5 * np.sin(2 * math.pi * 440.0 * np.arange(dataset_rate) / dataset_rate), dtype=torch.float32)
    for w in waves.values():
        assert w.shape == (1, dataset_rate)
        inner = slice(dataset_rate // 20, -dataset_rate // 20)  # the resampling filter's edges aside
        torch.testing.assert_close(w[0, inner], want[inner], atol=2e-2, rtol=0)
