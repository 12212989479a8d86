"""Spectral front ends computed with numpy alone (no librosa or torch at run time).

``mel_filterbank`` follows librosa's defaults (Slaney mel scale, Slaney area normalisation), and
``power_spectrogram`` its centred STFT with a periodic Hann window, so models trained on librosa
features get the same input.
"""

from __future__ import annotations

import numpy as np
import scipy.fft


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


def periodic_hann(size: int) -> np.ndarray:
    """The periodic Hann window (librosa's and scipy's default for spectra), float64."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)


def power_spectrogram(signal: np.ndarray, n_fft: int, hop: int, *, center: bool = True,
                      pad_mode: str = "constant") -> np.ndarray:
    """|STFT|² as [1 + n_fft // 2, frames] with a periodic Hann window (librosa's defaults)."""
    signal = np.asarray(signal, dtype=np.float32)
    if center:
        signal = np.pad(signal, n_fft // 2, mode=pad_mode)
    if len(signal) < n_fft:
        signal = np.pad(signal, (0, n_fft - len(signal)))
    frames = 1 + (len(signal) - n_fft) // hop
    window = periodic_hann(n_fft).astype(np.float32)
    strides = (signal.strides[0] * hop, signal.strides[0])
    framed = np.lib.stride_tricks.as_strided(signal, shape=(frames, n_fft), strides=strides)
    spectrum = scipy.fft.rfft(framed * window, n=n_fft, axis=1)
    power = spectrum.real ** 2  # |z|² without the square root np.abs would take
    power += spectrum.imag ** 2
    return power.T.astype(np.float32, copy=False)


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


# -- Kaldi filter-bank features, as BEATs computes them (torchaudio.compliance.kaldi.fbank) ----------------

KALDI_RATE = 16000
KALDI_FRAME = 400  # 25 ms
KALDI_SHIFT = 160  # 10 ms
KALDI_FFT = 512
KALDI_BANDS = 128
BEATS_MEAN = 15.41663
BEATS_STD = 6.55582
_KALDI_BANKS: np.ndarray | None = None


def _kaldi_mel(freqs: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freqs, dtype=np.float32) / 700.0)


def kaldi_mel_banks(bands: int = KALDI_BANDS, low_hz: float = 20.0, high_hz: float = KALDI_RATE / 2) -> np.ndarray:
    """[bands, 1 + FFT / 2] triangles evenly spaced on Kaldi's mel scale (weights in float32, as torchaudio
    builds them; the Nyquist bin gets no weight)."""
    mel_low, mel_high = _kaldi_mel(np.float32(low_hz)), _kaldi_mel(np.float32(high_hz))
    delta = (mel_high - mel_low) / np.float32(bands + 1)
    bin_mels = _kaldi_mel(np.float32(KALDI_RATE / KALDI_FFT) * np.arange(KALDI_FFT // 2, dtype=np.float32))
    left = mel_low + np.arange(bands, dtype=np.float32)[:, None] * delta
    centre, right = left + delta, left + 2 * delta
    up = (bin_mels[None, :] - left) / (centre - left)
    down = (right - bin_mels[None, :]) / (right - centre)
    banks = np.maximum(np.float32(0.0), np.minimum(up, down)).astype(np.float32)
    return np.pad(banks, ((0, 0), (0, 1)))


def povey_window(size: int) -> np.ndarray:
    """Kaldi's default window: a symmetric Hann raised to the power 0.85 (float64)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))) ** 0.85


def kaldi_fbank(signal: np.ndarray) -> np.ndarray:
    """[frames, 128] log mel energies of 16 kHz audio scaled to 16-bit range, Kaldi style: 25 ms frames every
    10 ms without edge padding, DC removed, pre-emphasis 0.97, Povey window, 512-point power spectrum."""
    global _KALDI_BANKS
    if _KALDI_BANKS is None:
        _KALDI_BANKS = kaldi_mel_banks()
    signal = np.asarray(signal, dtype=np.float32) * np.float32(2 ** 15)
    if len(signal) < KALDI_FRAME:
        return np.zeros((0, KALDI_BANDS), dtype=np.float32)
    frames = 1 + (len(signal) - KALDI_FRAME) // KALDI_SHIFT
    strides = (signal.strides[0] * KALDI_SHIFT, signal.strides[0])
    framed = np.lib.stride_tricks.as_strided(signal, shape=(frames, KALDI_FRAME), strides=strides).astype(np.float64)
    framed = framed - framed.mean(axis=1, keepdims=True)
    previous = np.concatenate([framed[:, :1], framed[:, :-1]], axis=1)
    framed = framed - 0.97 * previous
    window = povey_window(KALDI_FRAME)
    power = np.abs(scipy.fft.rfft(framed * window, n=KALDI_FFT, axis=1)) ** 2
    energies = power @ _KALDI_BANKS.T.astype(np.float64)
    return np.log(np.maximum(energies, np.finfo(np.float32).eps)).astype(np.float32)


def beats_fbank(signal: np.ndarray) -> np.ndarray:
    """BEATs' input for 16 kHz mono audio: the Kaldi fbank, normalised with its AudioSet mean and twice its std."""
    return (kaldi_fbank(signal) - np.float32(BEATS_MEAN)) / np.float32(2 * BEATS_STD)
