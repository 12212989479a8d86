"""FFmpeg's default resampler rebuilt as one matrix product, so that it can run where the models run.

The analysis hears every track at 16 kHz, resampled by FFmpeg (libswresample, through PyAV). On a GPU
the decoding workers need not resample: they hand over the decoded samples as they are, and the
resampling is done on the device (``frontend_graphs.decoded_audio_graph``) with the very filter FFmpeg
uses by default, so both paths hear the same audio (to float rounding; the tests compare them).

That filter, as FFmpeg's documentation and source describe it: a Kaiser-windowed sinc (β = 9) cut off
at 97 % of the lower of the two Nyquist frequencies, 32 zero crossings long at that cut-off (rounded up
to an even number of taps), one filter for each phase of the reduced rate ratio (at most 1,024 phases;
other ratios interpolate between phases, which is not rebuilt here), every phase scaled by the sum of
the zeroth phase's taps. Before its first sample the signal is mirrored about that sample; at its end
FFmpeg mirrors the last samples about the end.

Output sample ``j`` is centred on input position ``j·M/P`` (``P/M`` the reduced ratio), so ``P``
consecutive outputs take the same phases in turn over ``M`` inputs: a block of ``B·P`` outputs is a
fixed linear map of ``span·hop`` inputs (``hop = B·M``), and all the blocks are one matrix product of
overlapping frames of the padded signal.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

FILTER_SIZE = 32  # zero crossings of the sinc at the cut-off
CUTOFF = 0.97  # of the lower Nyquist frequency
KAISER_BETA = 9.0
MAX_PHASES = 1024  # FFmpeg's default phase count (phase_shift 10): ratios needing more interpolate
MIN_OUTPUTS_PER_BLOCK = 128  # outputs computed by one row of the product (wide enough for a GPU's matrix units)


@dataclass(frozen=True)
class ResamplePlan:
    """How a signal at ``rate`` becomes one at ``out``: the reduced ratio ``phases/step``, the filter, and the
    blocks of the matrix product."""

    rate: int
    out: int
    phases: int  # P: output samples per ``step`` input samples
    step: int  # M
    taps: int  # filter length
    blocks: int  # B: ratio periods per product row
    span: int  # input hops one row reads

    @property
    def center(self) -> int:
        return (self.taps - 1) // 2

    @property
    def hop(self) -> int:
        """Input samples between two product rows."""
        return self.blocks * self.step

    @property
    def per_row(self) -> int:
        """Output samples of one product row."""
        return self.blocks * self.phases

    def output_length(self, samples: int) -> int:
        """How many output samples FFmpeg makes of ``samples`` input samples. Those whose filter fits in
        the signal come as it streams; at its end FFmpeg mirrors the samples it still holds (from the
        next output's first tap on) and makes room for half of them, and the outputs that then fit
        come too."""
        if samples <= 0:
            return 0
        reach = self.taps - self.center  # an output at position t reads up to sample t + reach - 1
        streamed = self._outputs_up_to(samples - reach)
        held = samples - (streamed * self.step // self.phases - self.center)
        return self._outputs_up_to(samples + (held + 1) // 2 - reach)

    def _outputs_up_to(self, position: int) -> int:
        """How many outputs are centred at or before input sample ``position``."""
        return -(-(position + 1) * self.phases // self.step) if position >= 0 else 0

    def padded_length(self, samples: int) -> int:
        """Input samples, mirrored lead and padding included, that the product reads for ``samples``."""
        rows = -(-self.output_length(samples) // self.per_row)
        return (rows + self.span - 1) * self.hop

    @functools.cached_property
    def matrix(self) -> np.ndarray:
        """[span·hop, B·P] float32: output ``i`` of a row, from the row's input samples (counted from the
        mirrored lead's start, i.e. input position ``-center``)."""
        bank = filter_bank(self.rate, self.out)
        matrix = np.zeros((self.span * self.hop, self.per_row), dtype=np.float64)
        for i in range(self.per_row):
            position = i * self.step  # ·1/P: input position of output i within the row
            base, phase = divmod(position, self.phases)
            matrix[base:base + self.taps, i] = bank[phase]
        return matrix.astype(np.float32)


def output_length(rate: int, out: int, samples: int) -> int:
    """How many samples at ``out`` FFmpeg makes of ``samples`` at ``rate`` (as many where they are equal)."""
    return samples if rate == out else plan(rate, out).output_length(samples)


def shortest(rate: int, out: int) -> int:
    """The fewest samples ``resample`` takes: one more than the filter (one where nothing is resampled)."""
    return 1 if rate == out else plan(rate, out).taps + 1


def exact(rate: int, out: int) -> bool:
    """Whether FFmpeg resamples ``rate`` to ``out`` with a filter per phase (what ``plan`` rebuilds)."""
    return Fraction(out, rate).numerator <= MAX_PHASES


@functools.lru_cache(maxsize=32)
def plan(rate: int, out: int) -> ResamplePlan:
    if rate <= 0 or out <= 0 or not exact(rate, out):
        raise ValueError(f"no exact resampling plan from {rate} Hz to {out} Hz")
    ratio = Fraction(out, rate)
    taps = _taps(rate, out)
    blocks = max(1, -(-MIN_OUTPUTS_PER_BLOCK // ratio.numerator))
    hop = blocks * ratio.denominator
    # a row's last output sits at (per_row - 1)·M/P < hop and reads taps samples from there
    span = -(-(hop + taps) // hop)
    return ResamplePlan(rate, out, ratio.numerator, ratio.denominator, taps, blocks, span)


def _factor(rate: int, out: int) -> float:
    return min(out * CUTOFF / rate, 1.0)


def _taps(rate: int, out: int) -> int:
    taps = max(math.ceil(FILTER_SIZE / _factor(rate, out)), 1)
    return taps + taps % 2 if taps > 1 else taps


@functools.lru_cache(maxsize=32)
def filter_bank(rate: int, out: int) -> np.ndarray:
    """[phases, taps] float32: the filter of each output phase, as FFmpeg builds it (rounded to float32, as
    FFmpeg keeps it for float samples)."""
    ratio = Fraction(out, rate)
    phases, taps = ratio.numerator, _taps(rate, out)
    factor = _factor(rate, out)
    center = (taps - 1) // 2
    offsets = (np.arange(taps)[None, :] - center) - np.arange(phases)[:, None] / phases
    x = np.pi * offsets * factor
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc = np.where(x == 0, 1.0, np.sin(x) / x)
    w = 2.0 * x / (factor * taps * np.pi)
    window = np.i0(KAISER_BETA * np.sqrt(np.maximum(1.0 - w * w, 0.0)))
    bank = sinc * window
    return (bank / bank[0].sum()).astype(np.float32)


def padded(signal: np.ndarray, resample: ResamplePlan) -> np.ndarray:
    """The signal as the product reads it: mirrored about its first sample before it, mirrored about its
    end after it, then silence (numpy reference of what the device graph does)."""
    n, lead = len(signal), resample.center
    head = signal[1:lead + 1][::-1]
    head = np.concatenate([np.zeros(lead - len(head), dtype=signal.dtype), head])
    tail = signal[::-1][:resample.taps]
    total = resample.padded_length(n)
    out = np.zeros(total, dtype=np.float32)
    out[:lead] = head
    out[lead:lead + n] = signal
    end = min(total, lead + n + len(tail))
    out[lead + n:end] = tail[:end - lead - n]
    return out


def resample(signal: np.ndarray, rate: int, out: int) -> np.ndarray:
    """A mono float32 signal at ``rate`` resampled to ``out``, as FFmpeg resamples it (numpy reference of the
    device graph; the analysis on the CPU lets FFmpeg do it). The signal must be longer than the filter
    (``taps`` samples; FFmpeg's edge cases on shorter ones are not rebuilt)."""
    signal = np.asarray(signal, dtype=np.float32)
    if rate == out:
        return signal.copy()
    resample_plan = plan(rate, out)
    if len(signal) < shortest(rate, out):
        raise ValueError(f"a signal no longer than the filter ({resample_plan.taps} samples)")
    source = padded(signal, resample_plan)
    hop, span = resample_plan.hop, resample_plan.span
    rows = len(source) // hop - span + 1
    blocks = source.reshape(-1, hop)
    frames = np.concatenate([blocks[k:k + rows] for k in range(span)], axis=1)
    result = (frames @ resample_plan.matrix).reshape(-1)
    return result[:resample_plan.output_length(len(signal))]
