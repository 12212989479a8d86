"""Integrated loudness (EBU R128 / ITU-R BS.1770-4) and sample peak, computed while streaming.

The audio is taken at the file's own sample rate with its channels kept (resampling costs more than
all the rest), K-weighted per channel and squared; the mean squares of 100 ms steps are kept (a
two-hour file needs a few hundred kilobytes), from which the 400 ms blocks (75 % overlap), the absolute
gate (-70 LUFS) and the relative gate (-10 LU) are evaluated.

BS.1770 gives the K-weighting biquads' coefficients at 48 kHz only. At any rate they are derived here
from the two analogue filters those coefficients come from (a high shelf of +4 dB above ~1.7 kHz and a
~38 Hz high-pass) by the bilinear transform; at 48 kHz the derivation gives the standard's
coefficients to 1e-15 (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jamcaps_desktop.audio.decode import DecodeStats, iter_outputs

# ITU-R BS.1770-4, tables 1 and 2: the K-weighting filter at 48 kHz
SHELF_B_48K = np.array([1.53512485958697, -2.69169618940638, 1.19839281085285])
SHELF_A_48K = np.array([1.0, -1.69065929318241, 0.73248077421585])
HIGHPASS_A_48K = np.array([1.0, -1.99004745483398, 0.99007225036621])
# the analogue prototypes behind them: shelf centre (Hz), gain (dB), Q; high-pass corner (Hz), Q
_SHELF_HZ, _SHELF_DB, _SHELF_Q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
_SHELF_MID_EXPONENT = 0.4996667741545416  # the shelf's mid-band gain, as a power of its high-band gain
_HIGHPASS_HZ, _HIGHPASS_Q = 38.13547087602444, 0.5003270373238773
_SURROUND = {"BL", "BR", "SL", "SR", "SIDE_LEFT", "SIDE_RIGHT", "BACK_LEFT", "BACK_RIGHT"}


@dataclass(frozen=True)
class Loudness:
    integrated_lufs: float | None  # None for silence (nothing above the absolute gate)
    sample_peak_dbfs: float | None


def k_weighting(rate: int) -> np.ndarray:
    """The K-weighting filter at ``rate`` Hz as second-order sections: [[b0 b1 b2 1 a1 a2]] × 2."""
    k = np.tan(np.pi * _SHELF_HZ / rate)
    high = 10 ** (_SHELF_DB / 20)
    mid = high ** _SHELF_MID_EXPONENT
    norm = 1 + k / _SHELF_Q + k * k
    shelf = [(high + mid * k / _SHELF_Q + k * k) / norm, 2 * (k * k - high) / norm,
             (high - mid * k / _SHELF_Q + k * k) / norm, 1.0, 2 * (k * k - 1) / norm, (1 - k / _SHELF_Q + k * k) / norm]
    k = np.tan(np.pi * _HIGHPASS_HZ / rate)
    norm = 1 + k / _HIGHPASS_Q + k * k
    highpass = [1.0, -2.0, 1.0, 1.0, 2 * (k * k - 1) / norm, (1 - k / _HIGHPASS_Q + k * k) / norm]
    return np.array([shelf, highpass])


def step_samples(rate: int) -> int:
    """Samples in a 100 ms step (the gating blocks are four of them)."""
    return max(1, round(rate / 10))


def _weight(name: str) -> float:
    if name in ("LFE", "LFE2", "LOW_FREQUENCY"):
        return 0.0
    return 1.41 if name in _SURROUND else 1.0


class LoudnessMeter:
    """Feed [channels, samples] chunks at ``rate`` in order; ``result`` gives the integrated loudness."""

    def __init__(self, rate: int) -> None:
        if rate <= 0:
            raise ValueError("the sample rate must be positive")
        self.rate = rate
        self._sos = k_weighting(rate)
        self._sos32 = self._sos.astype(np.float32)
        self._step = step_samples(rate)
        self._state: np.ndarray | None = None
        self._pending = np.zeros((0, 0), dtype=np.float64)
        self._steps: list[np.ndarray] = []  # per 100 ms step: mean square per channel
        self._peak = 0.0
        self._queued: list[np.ndarray] = []
        self._queued_samples = 0
        self._channels: int | None = None

    def feed(self, chunk: np.ndarray) -> None:
        # a stream whose channels change midway (joined recordings) is measured in its first layout: the
        # gates and channel weights of BS.1770 have no meaning across two layouts
        if self._channels is None:
            self._channels = chunk.shape[0]
        elif chunk.shape[0] != self._channels:
            return
        # decoders hand out small chunks: gather about a second before filtering
        self._queued.append(chunk)
        self._queued_samples += chunk.shape[1]
        if self._queued_samples >= self.rate:
            self._process()

    def _process(self) -> None:
        if not self._queued:
            return
        chunk = np.concatenate(self._queued, axis=1)
        self._queued, self._queued_samples = [], 0
        channels = chunk.shape[0]
        if self._state is None:
            self._state = np.zeros((self._sos.shape[0], channels, 2), dtype=np.float32)
            self._pending = np.zeros((channels, 0), dtype=np.float32)
        if chunk.size:
            self._peak = max(self._peak, float(np.max(np.abs(chunk))))
        # filtered in float32 (three times faster than float64; it moves the result by under 0.001 LU),
        # the 100 ms means summed in float64
        from scipy.signal import sosfilt  # loaded on first use: it takes a decoding worker half a second to load

        filtered, self._state = sosfilt(self._sos32, np.asarray(chunk, dtype=np.float32), axis=1, zi=self._state)
        np.square(filtered, out=filtered)
        pending = np.concatenate([self._pending, filtered], axis=1) if self._pending.shape[1] else filtered
        step = self._step
        whole = pending.shape[1] // step
        if whole:
            blocks = pending[:, : whole * step].reshape(channels, whole, step)
            self._steps.extend(blocks.mean(axis=2, dtype=np.float64).T)
            pending = pending[:, whole * step:]
        self._pending = pending

    def result(self, channel_names: list[str]) -> Loudness:
        self._process()
        steps = np.array(self._steps) if self._steps else np.zeros((0, 1))
        return loudness_of_steps(steps, channel_names, self._peak)


def loudness_of_steps(steps: np.ndarray, channel_names: list[str], peak: float) -> Loudness:
    """The integrated loudness from the K-weighted mean squares of 100 ms steps ([steps, channels]), gated
    as BS.1770-4 says, and the sample peak (linear) in dBFS."""
    peak_db = 20 * np.log10(peak) if peak > 0 else None
    peak_dbfs = round(float(peak_db), 2) if peak_db is not None else None
    if len(steps) < 4:
        return Loudness(None, peak_dbfs)
    names = channel_names or ["FL"] * steps.shape[1]
    weights = np.array([_weight(n) for n in names[: steps.shape[1]]])
    per_step = np.asarray(steps, dtype=np.float64) @ weights       # weighted sum over channels
    blocks = np.convolve(per_step, np.ones(4) / 4, mode="valid")  # 400 ms blocks every 100 ms
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(blocks)
    above_absolute = blocks[block_lufs > -70.0]
    if not len(above_absolute):
        return Loudness(None, peak_dbfs)
    relative_gate = -0.691 + 10 * np.log10(above_absolute.mean()) - 10.0
    gated = blocks[(block_lufs > -70.0) & (block_lufs > relative_gate)]
    integrated = -0.691 + 10 * np.log10(gated.mean())
    return Loudness(round(float(integrated), 2), peak_dbfs)


def measure(path: str) -> Loudness:
    """The loudness of a whole file (decoded here for it alone)."""
    stats = DecodeStats()
    meter: LoudnessMeter | None = None
    for _index, chunk in iter_outputs(path, [(None, False)], stats=stats):
        meter = meter or LoudnessMeter(stats.source_rate)
        meter.feed(chunk)
    return meter.result(stats.channels) if meter else Loudness(None, None)
