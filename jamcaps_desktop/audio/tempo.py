"""Tempo (beats per minute, with decimals), estimated from an onset-strength envelope while streaming.

The audio (mono, 16 kHz) is cut into 64 ms frames every 10 ms; each frame's magnitude spectrum is
pooled into 40 mel bands and log-compressed, and the onset strength is the summed rise of the bands from
one frame to the next (spectral flux). Only that envelope is kept: 100 values a second, so a two-hour
file needs under 3 MB.

The tempo is read from the envelope's autocorrelation, averaged over 12 s stretches (so a drifting or
changing tempo gives the dominant one rather than a smear). A beat period P is scored by the
autocorrelation at P and at its multiples (a real beat repeats at 2P, 3P, 4P), weighted by a broad prior
centred on 120 BPM, which is what separates P from its halves and doubles when the music itself cannot
(octave errors are the usual failure of every tempo estimator; the accuracy report counts them apart).
The chosen period is then refined from the positions of its multiples' peaks, which gives decimals that
one autocorrelation lag (10 ms) cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from jamcaps_desktop.audio.features import mel_filterbank, periodic_hann
from jamcaps_desktop.audio.framing import FrameStream

RATE = 16000
FFT = 1024
HOP = 160  # 10 ms: 100 envelope values a second
FPS = RATE / HOP
BANDS = 40
MIN_BPM = 40.0
MAX_BPM = 220.0
PRIOR_CENTRE_BPM = 120.0
PRIOR_OCTAVES = 1.0  # standard deviation of the prior, in octaves
STRETCH = 1200  # envelope frames per autocorrelation stretch (12 s)
MAX_LAG = 600  # 6 s: up to four periods of the slowest tempo considered
MIN_SECONDS = 4.0  # less audio than this has no tempo worth stating


@dataclass(frozen=True)
class Tempo:
    bpm: float
    confidence: float  # 0–1: how clearly the winning period stands above the others


def band_filters() -> np.ndarray:
    """[BANDS, 1 + FFT / 2]: the mel bands (30 Hz to 7.6 kHz) each frame's magnitude spectrum is pooled into."""
    return mel_filterbank(RATE, FFT, BANDS, fmin=30.0, fmax=7600.0)


class OnsetEnvelope:
    """Feed mono 16 kHz chunks in order; ``envelope()`` returns the onset strength, 100 values a second."""

    def __init__(self) -> None:
        self._filters = band_filters()
        self._window = periodic_hann(FFT).astype(np.float32)
        self._stream = FrameStream(FFT, HOP, lead=FFT // 2)  # frame i centred on t = i·10 ms
        self._previous: np.ndarray | None = None
        self._values: list[np.ndarray] = []

    def feed(self, chunk: np.ndarray) -> None:
        framed = self._stream.feed(chunk)
        if framed is not None:
            self._consume(framed)

    def _consume(self, framed: np.ndarray) -> None:
        magnitude = np.abs(scipy.fft.rfft(framed * self._window, axis=1)).astype(np.float32, copy=False)
        bands = np.log1p(100.0 * (magnitude @ self._filters.T))  # [frames, BANDS]
        previous = bands[:1] if self._previous is None else self._previous
        rises = np.diff(np.vstack([previous, bands]), axis=0)
        self._values.append(np.maximum(rises, 0.0).mean(axis=1))
        self._previous = bands[-1:]

    def envelope(self) -> np.ndarray:
        framed = self._stream.flush()
        if framed is not None:
            self._consume(framed)
        return np.concatenate(self._values) if self._values else np.zeros(0, dtype=np.float32)


def _autocorrelation(envelope: np.ndarray) -> np.ndarray:
    """Mean normalised autocorrelation (lags 0..MAX_LAG) of the envelope's 12 s stretches, half overlapping."""
    # remove the slow loudness contour so that only the pulse remains
    kernel = np.ones(int(FPS)) / int(FPS)
    pulse = envelope - np.convolve(envelope, kernel, mode="same")
    pulse = np.maximum(pulse, 0.0)
    length = min(STRETCH, len(pulse))
    starts = range(0, max(1, len(pulse) - length + 1), max(1, length // 2))
    size = 1 << int(np.ceil(np.log2(2 * length)))
    total = np.zeros(MAX_LAG + 1)
    weight = 0.0
    window = np.hanning(length)
    pieces = np.stack([pulse[start:start + length] * window for start in starts])
    energies = [float(piece @ piece) for piece in pieces]
    kept = [index for index, energy in enumerate(energies) if energy > 1e-12]
    if not kept:
        return total
    # every stretch's transform at once (the same arithmetic row by row, without a call per stretch)
    spectra = scipy.fft.rfft(pieces[kept], n=size, axis=1)
    correlations = np.fft.irfft(spectra * np.conj(spectra), n=size, axis=1)[:, : MAX_LAG + 1]
    # a lag near the stretch's length overlaps little of it: undo that bias
    overlap = np.maximum(1.0 - np.arange(MAX_LAG + 1) / length, 0.25)
    for index, corr in zip(kept, correlations, strict=True):
        corr = corr / corr[0]
        total += energies[index] * corr / overlap
        weight += energies[index]
    return total / weight if weight else total


def _saliences(corr: np.ndarray, periods: np.ndarray) -> np.ndarray:
    """How strongly the envelope repeats every ``periods[i]`` frames (and at its multiples): the
    autocorrelation, linearly interpolated, at each period's first four multiples that it reaches."""
    total, weights = np.zeros(len(periods)), np.zeros(len(periods))
    for multiple, weight in ((1, 1.0), (2, 0.5), (3, 0.33), (4, 0.25)):
        lags = multiple * periods
        reached = lags < len(corr) - 1
        low = np.floor(np.where(reached, lags, 0.0)).astype(int)
        frac = np.where(reached, lags, 0.0) - low
        values = corr[low] * (1 - frac) + corr[low + 1] * frac
        total += np.where(reached, weight * np.maximum(values, 0.0), 0.0)
        weights += np.where(reached, weight, 0.0)
    return np.divide(total, weights, out=np.zeros(len(periods)), where=weights > 0)


def _refine(corr: np.ndarray, period: float) -> float:
    """The period that best explains the peaks found near ``period`` and its multiples (sub-lag precision)."""
    numerator, denominator = 0.0, 0.0
    multiple = 1
    while multiple * period < len(corr) - 2:
        centre = multiple * period
        low, high = max(1, int(centre - 2)), min(len(corr) - 2, int(centre + 2) + 1)
        index = low + int(np.argmax(corr[low:high + 1]))
        if 0 < index < len(corr) - 1 and corr[index] >= corr[index - 1] and corr[index] >= corr[index + 1]:
            left, mid, right = corr[index - 1], corr[index], corr[index + 1]
            curvature = left - 2 * mid + right
            offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
            peak = index + float(np.clip(offset, -0.5, 0.5))
            weight = max(float(mid), 0.0)
            numerator += weight * multiple * peak
            denominator += weight * multiple * multiple
            period = peak / multiple if multiple == 1 else numerator / denominator
        multiple += 1
    return numerator / denominator if denominator else period


def estimate(envelope: np.ndarray) -> Tempo | None:
    """The dominant tempo of an onset envelope, or None where there is too little audio or no pulse."""
    if len(envelope) < MIN_SECONDS * FPS or float(np.max(envelope, initial=0.0)) <= 0.0:
        return None
    corr = _autocorrelation(np.asarray(envelope, dtype=np.float64))
    periods = np.arange(FPS * 60 / MAX_BPM, FPS * 60 / MIN_BPM, 0.25)
    bpms = FPS * 60 / periods
    raw = _saliences(corr, periods)
    prior = np.exp(-0.5 * (np.log2(bpms / PRIOR_CENTRE_BPM) / PRIOR_OCTAVES) ** 2)
    scores = raw * prior
    best = int(np.argmax(scores))
    if raw[best] <= 0.02:
        return None
    period = _refine(corr, float(periods[best]))
    # confidence: the winner against the best score at least 8 % of a period away (its rivals, not its shoulder)
    far = np.abs(periods - periods[best]) > 0.08 * periods[best]
    rival = float(scores[far].max(initial=0.0))
    confidence = float(np.clip((scores[best] - rival) / scores[best] + 0.5 * min(raw[best], 1.0), 0.0, 1.0))
    return Tempo(round(FPS * 60 / period, 2), round(confidence, 3))


def tempo_of_samples(samples: np.ndarray) -> Tempo | None:
    """Convenience for a whole mono 16 kHz signal in memory."""
    onsets = OnsetEnvelope()
    onsets.feed(samples)
    return estimate(onsets.envelope())
