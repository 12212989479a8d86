"""Spectral front ends computed with numpy alone (no librosa or torch at run time).

``mel_filterbank`` follows librosa's defaults (Slaney mel scale, Slaney area normalisation), and
``power_spectrogram`` its centred STFT with a periodic Hann window, so models trained on librosa
features get the same input.
"""

from __future__ import annotations

import numpy as np


def hz_to_mel(freqs: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freqs = np.asanyarray(freqs, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = freqs / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = freqs >= min_log_hz
    mels = np.where(above, min_log_mel + np.log(np.maximum(freqs, 1e-10) / min_log_hz) / logstep, mels)
    return mels


def mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asanyarray(mels, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    above = mels >= min_log_mel
    return np.where(above, min_log_hz * np.exp(logstep * (mels - min_log_mel)), freqs)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
                   ) -> np.ndarray:
    """[n_mels, 1 + n_fft // 2] triangular filters, area-normalised (librosa ``norm='slaney'``)."""
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0, sample_rate / 2, 1 + n_fft // 2)
    mel_points = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    weights = np.zeros((n_mels, len(fft_freqs)))
    for i in range(n_mels):
        lower = -ramps[i] / widths[i]
        upper = ramps[i + 2] / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_points[2:n_mels + 2] - mel_points[:n_mels])
    return (weights * enorm[:, None]).astype(np.float32)


def power_spectrogram(signal: np.ndarray, n_fft: int, hop: int, *, center: bool = True,
                      pad_mode: str = "constant") -> np.ndarray:
    """|STFT|² as [1 + n_fft // 2, frames] with a periodic Hann window (librosa's defaults)."""
    signal = np.asarray(signal, dtype=np.float32)
    if center:
        signal = np.pad(signal, n_fft // 2, mode=pad_mode)
    if len(signal) < n_fft:
        signal = np.pad(signal, (0, n_fft - len(signal)))
    frames = 1 + (len(signal) - n_fft) // hop
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    strides = (signal.strides[0] * hop, signal.strides[0])
    framed = np.lib.stride_tricks.as_strided(signal, shape=(frames, n_fft), strides=strides)
    spectrum = np.fft.rfft(framed * window, n=n_fft, axis=1)
    return (np.abs(spectrum) ** 2).T.astype(np.float32)


MUSICNN_RATE = 16000
MUSICNN_FFT = 512
MUSICNN_HOP = 256
MUSICNN_BANDS = 96
_MUSICNN_FILTERS: np.ndarray | None = None


def musicnn_melspec(signal: np.ndarray, *, pad_mode: str = "constant") -> np.ndarray:
    """musicnn's input for 16 kHz mono audio: [frames, 96] of log10(1 + 10000·mel), the mel via float16."""
    global _MUSICNN_FILTERS
    if _MUSICNN_FILTERS is None:
        _MUSICNN_FILTERS = mel_filterbank(MUSICNN_RATE, MUSICNN_FFT, MUSICNN_BANDS)
    power = power_spectrogram(signal, MUSICNN_FFT, MUSICNN_HOP, pad_mode=pad_mode)
    mel = (_MUSICNN_FILTERS @ power).T
    return np.log10(10000.0 * mel.astype(np.float16).astype(np.float32) + 1.0)
