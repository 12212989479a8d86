"""EBU R128 integrated loudness against the values ITU-R BS.1770-4 defines for sine tones."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jamcaps_desktop.audio.loudness import HIGHPASS_A_48K, SHELF_A_48K, SHELF_B_48K, k_weighting, measure


def _write(path, signal: np.ndarray, rate: int, layout: str) -> str:
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream("pcm_f32le", rate=rate)
        stream.layout = layout
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(signal, dtype=np.float32), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return str(path)


def _tone(rate: int, seconds: float, dbfs: float) -> np.ndarray:
    return (10 ** (dbfs / 20)) * np.sin(2 * np.pi * 997 * np.arange(int(rate * seconds)) / rate)


@pytest.mark.parametrize("rate", [48000, 44100, 96000, 22050, 16000])
@pytest.mark.parametrize("dbfs", [-20.0, -23.0, -31.5])
def test_stereo_997_hz_sine_reads_its_level(tmp_path, rate, dbfs):
    tone = _tone(rate, 5, dbfs)
    result = measure(_write(tmp_path / "t.wav", np.stack([tone, tone]), rate, "stereo"))
    assert result.integrated_lufs == pytest.approx(dbfs, abs=0.05)
    assert result.sample_peak_dbfs == pytest.approx(dbfs, abs=0.05)


def test_one_channel_is_3_db_lower_as_bs1770_weights_it(tmp_path):
    result = measure(_write(tmp_path / "m.wav", _tone(48000, 5, -20)[None], 48000, "mono"))
    assert result.integrated_lufs == pytest.approx(-23.01, abs=0.05)


def test_gating_ignores_silence_and_quiet_passages(tmp_path):
    loud = _tone(48000, 20, -20)  # long enough that the blocks straddling its edges hardly count
    quiet = _tone(48000, 4, -45)  # more than 10 LU below: removed by the relative gate
    silence = np.zeros(48000 * 4)
    signal = np.concatenate([silence, loud, quiet, silence])
    result = measure(_write(tmp_path / "g.wav", np.stack([signal, signal]), 48000, "stereo"))
    assert result.integrated_lufs == pytest.approx(-20.0, abs=0.1)
    empty = measure(_write(tmp_path / "z.wav", np.zeros((2, 48000 * 2)), 48000, "stereo"))
    assert empty.integrated_lufs is None


def test_k_weighting_derived_at_48_khz_is_the_standards_filter():
    shelf, highpass = k_weighting(48000)
    assert np.allclose(shelf[:3], SHELF_B_48K, atol=1e-12) and np.allclose(shelf[3:], SHELF_A_48K, atol=1e-12)
    assert np.allclose(highpass[:3], [1.0, -2.0, 1.0]) and np.allclose(highpass[3:], HIGHPASS_A_48K, atol=1e-12)


@pytest.mark.parametrize("rate", [44100, 96000])
def test_k_weighting_responds_alike_at_every_rate(rate):
    from scipy.signal import sosfreqz

    freqs = np.array([20.0, 40.0, 100.0, 1000.0, 2000.0, 5000.0, 8000.0])
    _, ours = sosfreqz(k_weighting(rate), worN=freqs, fs=rate)
    _, reference = sosfreqz(k_weighting(48000), worN=freqs, fs=48000)
    assert np.allclose(20 * np.log10(np.abs(ours)), 20 * np.log10(np.abs(reference)), atol=0.05)


@pytest.mark.filterwarnings("ignore:Badly conditioned filter coefficients")  # SciPy's, for a leading zero
@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-4.0, 4.0), min_size=3, max_size=3),
       st.lists(st.floats(-1.9, 1.9), min_size=2, max_size=2), st.floats(0.25, 4.0))
def test_a_sections_state_space_is_scipys(numerator, poles, scale):
    """The loudness graphs' filter in state-space form, written out so that a job need not import
    ``scipy.signal``, gives SciPy's ``tf2ss`` for any second-order section (and so the same filter)."""
    from scipy.signal import tf2ss

    from jamcaps_desktop.audio.loudness_blocks import section_state_space

    denominator = np.array([1.0, *poles]) * scale
    ours = section_state_space(np.array(numerator), denominator)
    theirs = tf2ss(np.array(numerator), denominator)
    for mine, reference in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=1e-12, atol=1e-12)


def test_the_loudness_blocks_are_planned_without_scipy_signal():
    import subprocess
    import sys

    from jamcaps_desktop.audio.loudness_blocks import block_plan

    code = ("import sys; from jamcaps_desktop.audio.loudness_blocks import block_plan; "
            "print('scipy.signal' in sys.modules, *(block_plan(r).context for r in (44100, 48000)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", str(block_plan(44100).context), str(block_plan(48000).context)]
    assert all(2 < int(context) < 256 for context in out[1:])
