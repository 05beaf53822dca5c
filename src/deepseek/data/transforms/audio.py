"""Audio transforms. A sample is a waveform tensor ``(T,)``, ``(C, T)`` or ``(N, C, T)`` at the
transform's ``sample_rate``, or a dict ``{"waveform": ..., "sample_rate": int}`` (what the spoken-
digit and WAV-folder datasets yield); dict in, dict out. :class:`FeatureExtract` adds ``features``
``(..., n_feats, frames)``; SpecAugment masks ``features`` when present, else the waveform's STFT.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from deepseek.data.transforms.audio_ops import dct_matrix, mel_filterbank, power_spectrogram, resample
from deepseek.data.transforms.base import Transform, transform, uniform

Audio = torch.Tensor | dict[str, Any]


def _unpack(x: Audio, default_sr: int) -> tuple[torch.Tensor, int]:
    if isinstance(x, dict):
        return x["waveform"], int(x.get("sample_rate", default_sr))
    return x, default_sr


def _pack(x: Audio, waveform: torch.Tensor, sample_rate: int | None = None, **extra: Any) -> Audio:
    if not isinstance(x, dict):
        return waveform
    out = {**x, "waveform": waveform, **extra}
    if sample_rate is not None:
        out["sample_rate"] = sample_rate
    return out


@transform("Resample", "audio")
class Resample(Transform):
    """Resample to ``target_sr`` (windowed sinc). ``(..., T) -> (..., ceil(T * target_sr / sr))``."""

    random = False

    preserves_shape = False

    def __init__(self, target_sr: int = 16000, orig_sr: int | None = None) -> None:
        self.target_sr, self.orig_sr = target_sr, orig_sr

    def __call__(self, x: Audio, generator: torch.Generator | None = None) -> Audio:
        if not isinstance(x, dict) and self.orig_sr is None:
            raise ValueError("Resample of a bare tensor needs orig_sr; or pass {'waveform', 'sample_rate'}")
        wave, sr = _unpack(x, self.orig_sr or self.target_sr)
        return _pack(x, resample(wave, sr, self.target_sr), self.target_sr)


@transform("SpeedPerturb", "audio")
class SpeedPerturb(Transform):
    """Play faster/slower by a rate in ``[min_rate, max_rate]`` (pitch moves too), by resampling.

    ``(..., T) -> (..., ~T / rate)``; rates are quantised to 1/100.
    """

    preserves_shape = False

    def __init__(self, min_rate: float = 0.8, max_rate: float = 1.2) -> None:
        self.min_rate, self.max_rate = min_rate, max_rate

    def __call__(self, x: Audio, generator: torch.Generator | None = None) -> Audio:
        wave, _ = _unpack(x, 16000)
        rate = round(float(uniform(self.min_rate, self.max_rate, generator)) * 100)
        return _pack(x, resample(wave, rate, 100))


@transform("TimeShift", "audio")
class TimeShift(Transform):
    """Roll the waveform by up to ``max_fraction`` of its length, either way. Same shape out."""

    def __init__(self, max_fraction: float = 0.1) -> None:
        self.max_fraction = max_fraction

    def __call__(self, x: Audio, generator: torch.Generator | None = None) -> Audio:
        wave, _ = _unpack(x, 16000)
        limit = int(wave.shape[-1] * self.max_fraction)
        shift = int(torch.randint(-limit, limit + 1, (), generator=generator)) if limit else 0
        return _pack(x, torch.roll(wave, shift, dims=-1))


@transform("AddNoise", "audio")
class AddNoise(Transform):
    """Add white noise at an SNR (dB) drawn from ``snr_db``. Same shape out."""

    def __init__(self, snr_db: tuple[float, float] = (10.0, 30.0)) -> None:
        self.snr_db = snr_db

    def __call__(self, x: Audio, generator: torch.Generator | None = None) -> Audio:
        wave, _ = _unpack(x, 16000)
        snr = float(uniform(*self.snr_db, generator))
        signal_power = wave.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-12)
        noise = torch.randn(wave.shape, generator=generator, dtype=wave.dtype).to(wave.device)
        return _pack(x, wave + noise * torch.sqrt(signal_power / 10 ** (snr / 10)))


@transform("VolumePerturb", "audio")
class VolumePerturb(Transform):
    """Scale by a gain (dB) drawn from ``gain_db``. Same shape out."""

    def __init__(self, gain_db: tuple[float, float] = (-6.0, 6.0)) -> None:
        self.gain_db = gain_db

    def __call__(self, x: Audio, generator: torch.Generator | None = None) -> Audio:
        wave, _ = _unpack(x, 16000)
        return _pack(x, wave * 10 ** (float(uniform(*self.gain_db, generator)) / 20))


@transform("FeatureExtract", "audio")
class FeatureExtract(Transform):
    """``spectrogram`` (log power), ``fbank`` (log mel) or ``mfcc``: ``(..., T) -> (..., n_feats, frames)``.

    Frames are centred, ``hop_length`` apart; ``n_feats`` is ``n_fft // 2 + 1``, ``n_mels`` or ``n_mfcc``.
    """

    random = False

    preserves_shape = False

    def __init__(
        self,
        type: Literal["mfcc", "fbank", "spectrogram"] = "fbank",
        n_mels: int = 80,
        n_mfcc: int = 40,
        n_fft: int = 400,
        hop_length: int = 160,
        sample_rate: int = 16000,
    ) -> None:
        if type == "mfcc" and n_mfcc > n_mels:
            raise ValueError(f"n_mfcc ({n_mfcc}) cannot exceed n_mels ({n_mels})")
        self.type, self.n_mels, self.n_mfcc = type, n_mels, n_mfcc
        self.n_fft, self.hop_length, self.sample_rate = n_fft, hop_length, sample_rate

    def __call__(self, x: Audio, generator: torch.Generator | None = None) -> Audio:
        wave, sr = _unpack(x, self.sample_rate)
        power = power_spectrogram(wave.float(), self.n_fft, self.hop_length)
        if self.type == "spectrogram":
            feats = torch.log(power + 1e-10)
        else:
            fb = mel_filterbank(self.n_fft // 2 + 1, sr, self.n_mels).to(power.device)
            feats = torch.log(torch.einsum("mf,...ft->...mt", fb, power) + 1e-10)
            if self.type == "mfcc":
                feats = torch.einsum("km,...mt->...kt", dct_matrix(self.n_mfcc, self.n_mels).to(power.device), feats)
        return {**x, "features": feats} if isinstance(x, dict) else feats


def _masks(size: int, width: int, count: int, generator: torch.Generator | None) -> list[tuple[int, int]]:
    out = []
    for _ in range(count):
        w = int(torch.randint(0, max(1, min(width, size)) + 1, (), generator=generator))
        start = int(torch.randint(0, max(1, size - w + 1), (), generator=generator))
        out.append((start, start + w))
    return out


@transform("SpecAugment", "audio")
class SpecAugment(Transform):
    """Zero ``n_freq_masks`` bands of up to ``freq_mask`` bins and ``n_time_masks`` spans of up to
    ``time_mask`` frames (Park et al. 2019). On features ``(..., F, frames)``; on a waveform the masks
    apply to its STFT, which is inverted back. Same shape out."""

    def __init__(
        self,
        freq_mask: int = 10,
        time_mask: int = 20,
        n_freq_masks: int = 1,
        n_time_masks: int = 1,
        n_fft: int = 400,
        hop_length: int = 160,
    ) -> None:
        self.freq_mask, self.time_mask = freq_mask, time_mask
        self.n_freq_masks, self.n_time_masks = n_freq_masks, n_time_masks
        self.n_fft, self.hop_length = n_fft, hop_length

    def _mask(self, spec: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        spec = spec.clone()
        for a, b in _masks(spec.shape[-2], self.freq_mask, self.n_freq_masks, generator):
            spec[..., a:b, :] = 0
        for a, b in _masks(spec.shape[-1], self.time_mask, self.n_time_masks, generator):
            spec[..., :, a:b] = 0
        return spec

    def __call__(self, x: Audio, generator: torch.Generator | None = None) -> Audio:
        if isinstance(x, dict) and "features" in x:
            return {**x, "features": self._mask(x["features"], generator)}
        if not isinstance(x, dict):
            return self._mask(x, generator)  # a bare tensor is taken to be features
        wave = x["waveform"]
        shape, window = wave.shape, torch.hann_window(self.n_fft, device=wave.device, dtype=wave.dtype)
        flat = wave.reshape(-1, shape[-1])
        spec = torch.stft(flat, self.n_fft, self.hop_length, window=window, return_complex=True)
        spec = self._mask(spec, generator)
        back = torch.istft(spec, self.n_fft, self.hop_length, window=window, length=shape[-1])
        return {**x, "waveform": back.reshape(shape)}


@transform("SpecMix", "audio")
class SpecMix(Transform):
    """Batch-level: replace random frequency bands and time spans of each spectrogram with those of a
    shuffled partner; labels mixed by the replaced area (Kim et al. 2021).

    ``(features (N, ..., F, frames), labels (N,) or (N, C)) -> (features, soft labels (N, num_classes))``.
    """

    batch_level = True

    def __init__(self, num_classes: int = 10, freq_band: int = 8, time_band: int = 20, bands: int = 2) -> None:
        self.num_classes, self.freq_band, self.time_band, self.bands = num_classes, freq_band, time_band, bands

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator | None = None):
        x, y = batch
        f, t = x.shape[-2:]
        mask = torch.zeros(f, t, dtype=torch.bool)
        for a, b in _masks(f, self.freq_band, self.bands, generator):
            mask[a:b, :] = True
        for a, b in _masks(t, self.time_band, self.bands, generator):
            mask[:, a:b] = True
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        mask = mask.to(x.device)
        out = torch.where(mask, x[perm], x)
        share = float(mask.float().mean())
        soft = y.float() if y.dim() == 2 else torch.nn.functional.one_hot(y.long(), self.num_classes).float()
        return out, (1 - share) * soft + share * soft[perm]
