"""Pure-torch audio signal operations (torchaudio cannot be installed beside this project's torch):
windowed-sinc resampling, STFT power spectra, an HTK mel filter bank and an orthonormal DCT-II."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample(waveform: torch.Tensor, orig_sr: int, new_sr: int, width: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """Resample ``(..., T)`` from ``orig_sr`` to ``new_sr`` with a Hann-windowed sinc low-pass filter.

    Output ``(..., ceil(T * new_sr / orig_sr))``. Polyphase: one filter per output phase, applied by a
    strided ``conv1d``, so the cost is linear in T for any rational ratio.
    """
    if orig_sr == new_sr:
        return waveform
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    cutoff = min(orig, new) * rolloff
    half = math.ceil(width * orig / cutoff)
    taps = torch.arange(-half, half + orig, dtype=torch.float64)[None, :] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + taps) * cutoff
    t = t.clamp(-width, width)
    window = torch.cos(t * math.pi / width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
    kernels = (sinc * window * cutoff / orig).to(waveform.dtype).to(waveform.device)[:, None, :]  # (new, 1, K)
    shape, n = waveform.shape, waveform.shape[-1]
    x = F.pad(waveform.reshape(-1, 1, n), (half, half + orig))
    y = F.conv1d(x, kernels, stride=orig).transpose(1, 2).reshape(x.shape[0], -1)
    target = math.ceil(new * n / orig)
    return y[:, :target].reshape(*shape[:-1], target)


def power_spectrogram(waveform: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """``(..., T) -> (..., n_fft // 2 + 1, frames)`` power spectrum (Hann window, centred frames)."""
    shape = waveform.shape
    window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)
    spec = torch.stft(
        waveform.reshape(-1, shape[-1]), n_fft, hop_length, window=window, center=True, return_complex=True
    )
    power = spec.real**2 + spec.imag**2
    return power.reshape(*shape[:-1], *power.shape[-2:])


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(
    n_freqs: int, sample_rate: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular HTK mel filters ``(n_mels, n_freqs)`` over the bins of an ``(n_freqs - 1) * 2``-point FFT."""
    f_max = f_max if f_max is not None else sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def dct_matrix(n_out: int, n_in: int) -> torch.Tensor:
    """Orthonormal DCT-II ``(n_out, n_in)``: rows are the first ``n_out`` cosine bases."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.float()
