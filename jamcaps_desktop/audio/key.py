"""Musical key, estimated from a pitch-class profile while streaming.

The audio (mono, 16 kHz) is cut into 512 ms frames every 256 ms, long enough to tell a semitone apart
down to about 70 Hz. In each frame only spectral peaks between 70 Hz and 2 kHz count, and only those
standing at least 6 dB above the spectrum around them (partials, not the noise floor's ripples, which
would otherwise favour the pitch classes that span more frequency bins). Each peak adds its level (dB,
over a 40 dB range below the frame's loudest) to its pitch class, split between neighbouring classes by
how far it is from an equal-tempered semitone (A = 440 Hz).
Frames are summed, so one running 12-value profile is all that is kept.

The profile is correlated with the 24 rotations of two published key profiles — Krumhansl and
Kessler's probe-tone ratings and Temperley's Kostka-Payne corpus profile — and the key with the highest
mean correlation wins. The confidence says how far it stands above the runner-up and how tonal the
profile is at all; noise, speech and unpitched drums score low, and below a floor no key is stated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.ndimage import uniform_filter1d

from jamcaps_desktop.audio.features import periodic_hann
from jamcaps_desktop.audio.framing import FrameStream
from jamcaps_desktop.tags.keys import key_name

RATE = 16000
FFT = 8192
HOP = 4096
FMIN = 70.0
FMAX = 2000.0
MIN_SECONDS = 2.0
KERNEL = 31  # bins (60 Hz) of spectrum a peak is compared with
PROMINENCE_DB = 6.0
DYNAMIC_RANGE_DB = 40.0
_PROMINENCE_RATIO = 10 ** (PROMINENCE_DB / 20)
_FLOOR = 1e-12
MIN_CONFIDENCE = 0.35  # below this (noise, most unpitched sounds) no key is stated

# Krumhansl & Kessler (1982), probe-tone ratings, tonic first
_KRUMHANSL_MAJOR = [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]
_KRUMHANSL_MINOR = [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]
# Temperley (2007), Kostka-Payne corpus: the share of segments containing each scale degree
_TEMPERLEY_MAJOR = [0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400]
_TEMPERLEY_MINOR = [0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330]


@dataclass(frozen=True)
class Key:
    name: str  # canonical notation: "F#m", "Bb", …
    tonic: int  # pitch class, 0 = C
    minor: bool
    confidence: float  # 0–1


def _standardise(profile: np.ndarray) -> np.ndarray:
    centred = profile - profile.mean()
    return centred / np.linalg.norm(centred)


def _templates() -> np.ndarray:
    """[24, 12]: the 12 major then the 12 minor keys, each row the mean of the standardised profiles."""
    rows = []
    for major, minor in ((_KRUMHANSL_MAJOR, _KRUMHANSL_MINOR), (_TEMPERLEY_MAJOR, _TEMPERLEY_MINOR)):
        pair = []
        for base in (major, minor):
            profile = _standardise(np.asarray(base, dtype=np.float64))
            pair.append(np.stack([np.roll(profile, tonic) for tonic in range(12)]))
        rows.append(np.concatenate(pair))
    return np.stack(rows)  # [profiles, 24, 12]


_TEMPLATES = _templates()


def analysed_bins() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spectrum bins between FMIN and FMAX, the pitch class (0 = C) just below each, and the share of
    each bin's weight that goes to the class above (how far it is from that semitone, A = 440 Hz)."""
    freqs = np.fft.rfftfreq(FFT, 1.0 / RATE)
    bins = np.flatnonzero((freqs >= FMIN) & (freqs <= FMAX))
    semitones = 12 * np.log2(freqs[bins] / 440.0) + 9
    lower = np.floor(semitones)
    return bins, lower.astype(int) % 12, semitones - lower


class PitchProfile:
    """Feed mono 16 kHz chunks in order; ``profile()`` is the summed 12-bin pitch-class profile."""

    def __init__(self) -> None:
        self._bins, self._lower, self._upper_share = analysed_bins()
        self._upper = (self._lower + 1) % 12
        self._window = periodic_hann(FFT).astype(np.float32)
        self._stream = FrameStream(FFT, HOP)
        self._sum = np.zeros(12)
        self._frames = 0

    def feed(self, chunk: np.ndarray) -> None:
        framed = self._stream.feed(chunk)
        if framed is not None:
            self._consume(framed)

    def _consume(self, framed: np.ndarray) -> None:
        spectrum = np.abs(scipy.fft.rfft(framed * self._window, axis=1))[:, self._bins]
        self._add(spectrum)
        self._frames += len(framed)

    def _process(self) -> None:
        framed = self._stream.flush()
        if framed is not None:
            self._consume(framed)

    def _add(self, spectrum: np.ndarray) -> None:
        # keep local maxima only: a partial's skirt must not leak into the neighbouring semitone
        peaks = np.zeros_like(spectrum, dtype=bool)
        peaks[:, 1:-1] = (spectrum[:, 1:-1] > spectrum[:, :-2]) & (spectrum[:, 1:-1] >= spectrum[:, 2:])
        # a peak counts by how far it stands above its surroundings (the smoothed spectrum), in decibels
        # up to 40 dB: partials count, the noise floor's ripples between them do not. (More than
        # PROMINENCE_DB above the background is compared as a ratio; logarithms are taken of the peaks only.)
        floored = np.maximum(spectrum, _FLOOR)
        background = uniform_filter1d(spectrum, KERNEL, axis=1, mode="nearest")
        peaks &= floored > np.maximum(background, _FLOOR) * _PROMINENCE_RATIO
        rows, columns = np.nonzero(peaks)
        loudest = np.maximum(spectrum.max(axis=1), _FLOOR)
        level_db = 20 * np.log10(floored[rows, columns] / loudest[rows]) + DYNAMIC_RANGE_DB
        weights = np.bincount(columns, np.clip(level_db, 0.0, None), minlength=spectrum.shape[1])
        share = self._upper_share
        self._sum += np.bincount(self._lower, weights * (1 - share), minlength=12)
        self._sum += np.bincount(self._upper, weights * share, minlength=12)

    @property
    def frames(self) -> int:
        self._process()
        return self._frames

    def profile(self) -> np.ndarray:
        self._process()
        return self._sum.copy()


def estimate(profile: np.ndarray, frames: int) -> Key | None:
    """The key best matching a pitch-class profile; None where too little was heard or nothing is tonal."""
    if frames < MIN_SECONDS * RATE / HOP or float(np.sum(profile)) <= 0.0:
        return None
    spread = float(np.std(profile))
    if spread <= 0.0:
        return None
    observed = (profile - profile.mean()) / np.linalg.norm(profile - profile.mean())
    scores = (_TEMPLATES @ observed).mean(axis=0)  # [24]
    order = np.argsort(-scores)
    best, runner_up = int(order[0]), int(order[1])
    margin = float(scores[best] - scores[runner_up])
    # a clearly tonal profile correlates ~0.8+; random noise ~0; the margin separates close rivals
    confidence = float(np.clip(scores[best], 0.0, 1.0) * np.clip(0.5 + 4 * margin, 0.0, 1.0))
    if confidence < MIN_CONFIDENCE:
        return None
    minor = best >= 12
    tonic = best % 12
    return Key(key_name(tonic, minor), tonic, minor, round(confidence, 3))


def key_of_samples(samples: np.ndarray) -> Key | None:
    """Convenience for a whole mono 16 kHz signal in memory."""
    pitches = PitchProfile()
    pitches.feed(samples)
    return estimate(pitches.profile(), pitches.frames)
