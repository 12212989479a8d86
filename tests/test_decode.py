from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import FORMATS, make_audio

from jamcaps_desktop.audio.decode import DecodeError, DecodeStats, decode, iter_windows


def _dominant_hz(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.argmax(spectrum) * rate / len(signal))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_decodes_to_mono_at_the_model_rate(fmt, tmp_path):
    path = make_audio(tmp_path / f"tone.{FORMATS[fmt][0]}", fmt, seconds=3.0, freq=440.0)
    audio = decode(str(path), 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 2.9 * 16000 < len(audio) < 3.2 * 16000
    assert abs(_dominant_hz(audio[4000:40000], 16000) - 440) < 5
    assert 0.05 < float(np.max(np.abs(audio))) < 1.0


def test_windows_stream_without_holding_the_file(tmp_path):
    path = make_audio(tmp_path / "long.flac", "flac", seconds=10.0)
    windows = list(iter_windows(str(path), 16000, 3.0))
    assert [len(w) for w in windows] == [48000] * 4  # 3 + 3 + 3 + (1 s padded)
    assert np.all(windows[-1][16000 + 100:] == 0)
    overlapping = list(iter_windows(str(path), 16000, 3.0, hop_s=1.5, pad_last=False))
    assert len(overlapping) == 5
    first = list(iter_windows(str(path), 16000, 3.0, max_seconds=4.0))
    assert len(first) == 2


def test_a_short_track_gives_one_padded_window(tmp_path):
    path = make_audio(tmp_path / "short.wav", "wav", seconds=0.5)
    windows = list(iter_windows(str(path), 16000, 3.0))
    assert len(windows) == 1 and len(windows[0]) == 48000


def test_damaged_packets_are_skipped_not_fatal(tmp_path):
    path = make_audio(tmp_path / "tone.mp3", "mp3", seconds=6.0)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 3000] = bytes(range(256)) * 11 + bytes(184)  # garbage in the middle
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    stats = DecodeStats()
    windows = list(iter_windows(str(damaged), 16000, 1.0, stats=stats))
    assert len(windows) >= 5  # most of the six seconds survive


def test_undecodable_files_raise_a_clear_error(tmp_path):
    text = tmp_path / "notes.mp3"
    text.write_text("not audio at all\n" * 100)
    with pytest.raises(DecodeError):
        decode(str(text), 16000)
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError):
        decode(str(empty), 16000)


def test_a_stream_that_changes_layout_and_rate_midway_decodes_whole(tmp_path):
    from audio_fixtures import encode_signal

    from jamcaps_desktop.audio.decode import iter_outputs

    t = np.arange(44100 * 2) / 44100
    stereo = encode_signal(tmp_path / "a.mp3", "mp3", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    t = np.arange(48000 * 2) / 48000
    other = tmp_path / "b.mp3"
    import av

    with av.open(str(other), "w", format="mp3") as out:  # mono, 48 kHz
        stream = out.add_stream("libmp3lame", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)[None], format="fltp",
                                           layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(stereo.read_bytes() + other.read_bytes())  # as joining tools and bad rips do
    seconds = {0: 0.0, 1: 0.0}
    for index, chunk in iter_outputs(str(joined), [(16000, True), (None, False)]):
        seconds[index] += chunk.shape[-1] / (16000 if index == 0 else 44100)
    assert seconds[0] == pytest.approx(4.0, abs=0.25)


def test_eight_channel_audio_decodes(tmp_path):
    """7.1 audio (PyAV lists one plane too many for it, and reading them all crashed the process)."""
    from audio_fixtures import encode_planes

    rng = np.random.default_rng(7)
    planes = (rng.standard_normal((8, 48000 * 2)) * 0.05).astype(np.float32)
    planes[2] += 0.3 * np.sin(2 * np.pi * 440 * np.arange(planes.shape[1]) / 48000).astype(np.float32)
    path = encode_planes(tmp_path / "surround.m4a", planes, 48000, "7.1")
    audio = decode(str(path), 16000)
    assert len(audio) == pytest.approx(32000, abs=1200)
    spectrum = np.abs(np.fft.rfft(audio[4000:20000]))
    assert np.argmax(spectrum) * 16000 / 16000 == pytest.approx(440, abs=2)  # 1 Hz bins: the centre channel's tone
