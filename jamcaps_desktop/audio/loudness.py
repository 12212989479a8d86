"""Integrated loudness (EBU R128 / ITU-R BS.1770-4) and sample peak, computed while streaming.

The audio is resampled to 48 kHz with its channels kept, K-weighted per channel (the two biquads BS.1770
specifies at 48 kHz), and squared; the mean squares of 100 ms steps are kept (a two-hour file needs a
few hundred kilobytes), from which the 400 ms blocks (75 % overlap), the absolute gate (-70 LUFS) and
the relative gate (-10 LU) are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import sosfilt

from jamcaps_desktop.audio.decode import DecodeStats, iter_samples

RATE = 48000
STEP = RATE // 10  # 100 ms
# ITU-R BS.1770-4, table 1 and 2: the K-weighting filter at 48 kHz
_SHELF_B = np.array([1.53512485958697, -2.69169618940638, 1.19839281085285])
_SHELF_A = np.array([1.0, -1.69065929318241, 0.73248077421585])
_HIGHPASS_B = np.array([1.0, -2.0, 1.0])
_HIGHPASS_A = np.array([1.0, -1.99004745483398, 0.99007225036621])
_SOS = np.array([[*_SHELF_B, *_SHELF_A], [*_HIGHPASS_B, *_HIGHPASS_A]])  # the two in series
_SURROUND = {"BL", "BR", "SL", "SR", "SIDE_LEFT", "SIDE_RIGHT", "BACK_LEFT", "BACK_RIGHT"}


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float | None  # None for silence (nothing above the absolute gate)
    sample_peak_dbfs: float | None


def _weight(name: str) -> float:
    if name in ("LFE", "LFE2", "LOW_FREQUENCY"):
        return 0.0
    return 1.41 if name in _SURROUND else 1.0


class LoudnessMeter:
    """Feed [channels, samples] chunks at 48 kHz in order; ``result`` gives the integrated loudness."""

    def __init__(self) -> None:
        self._state: np.ndarray | None = None
        self._pending = np.zeros((0, 0), dtype=np.float64)
        self._steps: list[np.ndarray] = []  # per 100 ms step: mean square per channel
        self._peak = 0.0
        self._queued: list[np.ndarray] = []
        self._queued_samples = 0

    def feed(self, chunk: np.ndarray) -> None:
        # decoders hand out small chunks: gather about a second before filtering
        self._queued.append(chunk)
        self._queued_samples += chunk.shape[1]
        if self._queued_samples >= RATE:
            self._process()

    def _process(self) -> None:
        if not self._queued:
            return
        chunk = np.concatenate(self._queued, axis=1)
        self._queued, self._queued_samples = [], 0
        channels = chunk.shape[0]
        if self._state is None:
            self._state = np.zeros((_SOS.shape[0], channels, 2))
            self._pending = np.zeros((channels, 0))
        if chunk.size:
            self._peak = max(self._peak, float(np.max(np.abs(chunk))))
        filtered, self._state = sosfilt(_SOS, chunk.astype(np.float64), axis=1, zi=self._state)
        pending = np.concatenate([self._pending, filtered ** 2], axis=1)
        whole = pending.shape[1] // STEP
        if whole:
            self._steps.extend(pending[:, : whole * STEP].reshape(channels, whole, STEP).mean(axis=2).T)
            pending = pending[:, whole * STEP:]
        self._pending = pending

    def result(self, channel_names: list[str]) -> Loudness:
        self._process()
        peak_db = 20 * np.log10(self._peak) if self._peak > 0 else None
        peak = round(float(peak_db), 2) if peak_db is not None else None
        steps = self._steps
        if len(steps) < 4:
            return Loudness(None, peak)
        names = channel_names or ["FL"] * len(steps[0])
        weights = np.array([_weight(n) for n in names[: len(steps[0])]])
        per_step = np.array(steps) @ weights                          # weighted sum over channels
        blocks = np.convolve(per_step, np.ones(4) / 4, mode="valid")  # 400 ms blocks every 100 ms
        with np.errstate(divide="ignore"):
            block_lufs = -0.691 + 10 * np.log10(blocks)
        above_absolute = blocks[block_lufs > -70.0]
        if not len(above_absolute):
            return Loudness(None, peak)
        relative_gate = -0.691 + 10 * np.log10(above_absolute.mean()) - 10.0
        gated = blocks[(block_lufs > -70.0) & (block_lufs > relative_gate)]
        integrated = -0.691 + 10 * np.log10(gated.mean())
        return Loudness(round(float(integrated), 2), peak)


def measure(path: str) -> Loudness:
    """The loudness of a whole file (decoded here for it alone)."""
    stats = DecodeStats()
    meter = LoudnessMeter()
    for chunk in iter_samples(path, RATE, stats=stats, mono=False):
        meter.feed(chunk)
    return meter.result(stats.channels)
