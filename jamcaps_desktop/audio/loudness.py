"""Integrated loudness (EBU R128 / ITU-R BS.1770-4) and sample peak, computed while streaming.

The audio is resampled to 48 kHz with its channels kept, K-weighted per channel (the two biquads BS.1770
specifies at 48 kHz), and squared; the mean squares of 100 ms steps are kept (a two-hour file needs a
few hundred kilobytes), from which the 400 ms blocks (75 % overlap), the absolute gate (-70 LUFS) and
the relative gate (-10 LU) are evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter, lfilter_zi

from jamcaps_desktop.audio.decode import DecodeStats, iter_samples

RATE = 48000
STEP = RATE // 10  # 100 ms
# ITU-R BS.1770-4, table 1 and 2: the K-weighting filter at 48 kHz
_SHELF_B = np.array([1.53512485958697, -2.69169618940638, 1.19839281085285])
_SHELF_A = np.array([1.0, -1.69065929318241, 0.73248077421585])
_HIGHPASS_B = np.array([1.0, -2.0, 1.0])
_HIGHPASS_A = np.array([1.0, -1.99004745483398, 0.99007225036621])
_SURROUND = {"BL", "BR", "SL", "SR", "SIDE_LEFT", "SIDE_RIGHT", "BACK_LEFT", "BACK_RIGHT"}


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float | None  # None for silence (nothing above the absolute gate)
    sample_peak_dbfs: float | None


def _weight(name: str) -> float:
    if name in ("LFE", "LFE2", "LOW_FREQUENCY"):
        return 0.0
    return 1.41 if name in _SURROUND else 1.0


def measure(path: str) -> Loudness:
    stats = DecodeStats()
    shelf_state = highpass_state = None
    pending = np.zeros((0, 0), dtype=np.float64)
    steps: list[np.ndarray] = []  # per 100 ms step: mean square per channel
    peak = 0.0
    for chunk in iter_samples(path, RATE, stats=stats, mono=False):
        channels = chunk.shape[0]
        if shelf_state is None:
            base_shelf, base_high = lfilter_zi(_SHELF_B, _SHELF_A), lfilter_zi(_HIGHPASS_B, _HIGHPASS_A)
            shelf_state = np.zeros((channels, len(base_shelf)))
            highpass_state = np.zeros((channels, len(base_high)))
            pending = np.zeros((channels, 0))
        peak = max(peak, float(np.max(np.abs(chunk))) if chunk.size else 0.0)
        filtered, shelf_state = lfilter(_SHELF_B, _SHELF_A, chunk.astype(np.float64), axis=1, zi=shelf_state)
        filtered, highpass_state = lfilter(_HIGHPASS_B, _HIGHPASS_A, filtered, axis=1, zi=highpass_state)
        pending = np.concatenate([pending, filtered ** 2], axis=1)
        whole = pending.shape[1] // STEP
        if whole:
            steps.extend(pending[:, : whole * STEP].reshape(channels, whole, STEP).mean(axis=2).T)
            pending = pending[:, whole * STEP:]
    peak_db = 20 * np.log10(peak) if peak > 0 else None
    if len(steps) < 4:
        return Loudness(None, peak_db)
    names = stats.channels or ["FL"] * len(steps[0])
    weights = np.array([_weight(n) for n in names[: len(steps[0])]])
    per_step = np.array(steps) @ weights                          # weighted sum over channels
    blocks = np.convolve(per_step, np.ones(4) / 4, mode="valid")  # 400 ms blocks every 100 ms
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(blocks)
    above_absolute = blocks[block_lufs > -70.0]
    if not len(above_absolute):
        return Loudness(None, peak_db)
    relative_gate = -0.691 + 10 * np.log10(above_absolute.mean()) - 10.0
    gated = blocks[(block_lufs > -70.0) & (block_lufs > relative_gate)]
    integrated = -0.691 + 10 * np.log10(gated.mean())
    return Loudness(round(float(integrated), 2), round(float(peak_db), 2) if peak_db is not None else None)
