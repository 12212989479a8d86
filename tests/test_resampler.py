"""The rebuilt resampler against FFmpeg's own (through PyAV), which the analysis uses on the CPU."""

from __future__ import annotations

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jamcaps_desktop.audio import resampler
from jamcaps_desktop.audio.decode import decode

RATES = [8000, 11025, 12000, 22050, 24000, 32000, 37800, 44100, 48000, 88200, 96000, 192000, 705600]


def _ffmpeg(signal: np.ndarray, rate: int, out: int = 16000) -> np.ndarray:
    convert = av.AudioResampler(format="fltp", layout="mono", rate=out)
    frame = av.AudioFrame.from_ndarray(signal[None].astype(np.float32), format="fltp", layout="mono")
    frame.sample_rate = rate
    chunks = [f.to_ndarray()[0] for f in [*convert.resample(frame), *convert.resample(None)]]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


@settings(max_examples=80, deadline=None)
@given(rate=st.sampled_from(RATES), extra=st.integers(0, 20000), seed=st.integers(0, 2**32 - 1))
def test_resampling_to_16_khz_is_ffmpegs(rate, extra, seed):
    """Same length, and the same samples to float rounding, for any signal longer than the filter."""
    signal = (np.random.default_rng(seed).standard_normal(resampler.plan(rate, 16000).taps + 1 + extra) * 0.3
              ).astype(np.float32)
    expected = _ffmpeg(signal, rate)
    got = resampler.resample(signal, rate, 16000)
    assert len(got) == len(expected) == resampler.plan(rate, 16000).output_length(len(signal))
    assert np.abs(got - expected).max() < 1e-6


@pytest.mark.parametrize("rate", [44100, 48000, 22050, 96000])
def test_a_decoded_file_is_resampled_as_the_analysis_decodes_it(rate, tmp_path):
    """Through a file: FFmpeg decodes and resamples it in blocks, and mixes the channels down first."""
    from audio_fixtures import cadence, drum_pattern, encode_signal

    music = (0.6 * drum_pattern(101.0, 7.3, rate) + 0.4 * cadence(5, True, 7.3, rate)).astype(np.float32)
    path = encode_signal(tmp_path / "t.flac", "flac", music, rate)  # left: the signal; right: half of it
    with av.open(str(path)) as container:
        planes = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
    samples = planes.astype(np.float32) / (2**15 if planes.dtype == np.int16 else 2**31)
    mono = samples.reshape(len(samples), -1).mean(axis=0) if samples.ndim == 2 and samples.shape[0] == 2 else None
    if mono is None:  # packed: [1, samples·channels]
        mono = samples.reshape(-1, 2).mean(axis=1)
    expected = decode(str(path), 16000)
    got = resampler.resample(mono.astype(np.float32), rate, 16000)
    assert len(got) == len(expected)
    assert np.abs(got - expected).max() < 2e-6


def test_the_filter_passes_the_band_and_stops_what_would_alias():
    bank = resampler.filter_bank(44100, 16000)
    assert bank.shape == (160, 92)
    response = np.abs(np.fft.rfft(bank[0], 1 << 16))
    frequencies = np.fft.rfftfreq(1 << 16, 1 / 44100)
    assert np.all(np.abs(response[frequencies < 6000] - 1) < 0.01)
    assert response[np.searchsorted(frequencies, 0.97 * 8000)] == pytest.approx(0.5, abs=0.01)  # the cut-off
    assert np.all(response[frequencies > 9000] < 1e-3)


def test_ratios_ffmpeg_interpolates_and_too_short_signals_are_refused():
    assert not resampler.exact(44056, 16000)
    with pytest.raises(ValueError):
        resampler.plan(44056, 16000)
    with pytest.raises(ValueError):
        resampler.resample(np.zeros(92, dtype=np.float32), 44100, 16000)
    same = np.arange(10, dtype=np.float32)
    assert np.array_equal(resampler.resample(same, 16000, 16000), same)
