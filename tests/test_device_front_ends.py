"""The front ends as ONNX graphs (run here on ONNX Runtime's CPU provider, as they run on a GPU) against the
numpy implementations the CPU analysis uses, and the analysis with its front ends on the models' device."""

from __future__ import annotations

import glob
import json
import multiprocessing
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jamcaps_desktop.analysis.device_front_ends import DeviceFrontEnds
from jamcaps_desktop.analysis.native_audio import NativeAudio, SharedArray, save_array, save_native
from jamcaps_desktop.audio import frontend_graphs as graphs
from jamcaps_desktop.audio.features import beats_fbank, musicnn_melspec
from jamcaps_desktop.audio.frontends import FRONT_ENDS, InputSpec, Windower, cut_windows
from jamcaps_desktop.audio.key import PitchProfile
from jamcaps_desktop.audio.loudness import Loudness, LoudnessMeter
from jamcaps_desktop.audio.tempo import OnsetEnvelope
from jamcaps_desktop.models.engine import make_session


def _music(seconds: float, rate: int = 16000) -> np.ndarray:
    from audio_fixtures import cadence, drum_pattern

    phrase = 0.6 * drum_pattern(97.0, seconds) + 0.4 * cadence(3, True, seconds)
    if rate != 44100:
        from scipy.signal import resample_poly

        phrase = resample_poly(phrase, rate // 100, 441)
    return np.asarray(phrase, dtype=np.float32)


def _session(model):
    return make_session(model.SerializeToString(), "cpu")


@pytest.fixture(scope="module")
def front_ends() -> DeviceFrontEnds:
    specs = {"musicnn": InputSpec(FRONT_ENDS["musicnn-logmel"], 2.992, 187),
             "beats": InputSpec(FRONT_ENDS["kaldi-fbank-128"], 10.0, None)}
    return DeviceFrontEnds(specs, "cpu")


def test_the_musicnn_log_mel_graph_matches_numpy():
    audio = _music(12.0)
    windows = cut_windows(audio, 47872)
    got = _session(graphs.musicnn_logmel_graph(47872, 187)).run(None, {graphs.AUDIO: windows})[0]
    expected = np.stack([musicnn_melspec(w)[:187] for w in windows])
    assert got.shape == expected.shape == (4, 187, 96)
    # the log-mel passes through float16, so a value on a rounding edge may land one float16 step away
    assert np.abs(got - expected).max() < 2e-3
    assert np.mean(np.abs(got - expected) < 1e-5) > 0.5


def test_the_kaldi_fbank_graph_matches_numpy():
    audio = _music(20.0)
    windows = cut_windows(audio, 160000)
    got = _session(graphs.kaldi_fbank_graph(160000)).run(None, {graphs.AUDIO: windows})[0]
    expected = np.stack([beats_fbank(w) for w in windows])
    assert got.shape == expected.shape == (2, 998, 128)
    # float32 against float64: only the near-silent bands (energies ~100 dB below the loudest, which float32
    # arithmetic cannot resolve) differ beyond 1e-3
    assert np.abs(got - expected).max() < 3e-2
    audible = expected > -1.0
    assert audible.mean() > 0.5 and np.abs(got - expected)[audible].max() < 1e-3


@pytest.mark.parametrize("seconds", [0.01, 0.05, 1.0, 30.0, 170.0])
def test_onset_envelope_and_pitch_profile_match_the_streaming_numpy(front_ends, seconds, monkeypatch):
    import jamcaps_desktop.analysis.device_front_ends as device

    monkeypatch.setattr(device, "ONSET_STRETCH", 1000)  # several stretches, to test where they join
    monkeypatch.setattr(device, "PITCH_STRETCH", 40)
    audio = _music(seconds)
    onsets, pitches = OnsetEnvelope(), PitchProfile()
    for start in range(0, len(audio), 5000):  # as decoded: in chunks
        onsets.feed(audio[start:start + 5000])
        pitches.feed(audio[start:start + 5000])
    envelope = front_ends.onset_envelope(audio)
    expected = onsets.envelope()
    assert envelope.shape == expected.shape
    assert np.allclose(envelope, expected, rtol=0, atol=1e-5)
    profile, frames = front_ends.pitch_profile(audio)
    assert frames == pitches.frames
    expected_profile = pitches.profile()
    assert np.abs(profile - expected_profile).max() <= 1e-5 * max(1.0, expected_profile.max())
    # the track as it stays on the device after resampling: longer than the track (the resampler's tail, here
    # loud noise), of which only the first ``length`` samples are measured
    tail = np.random.default_rng(1).standard_normal(20000).astype(np.float32)
    on_device = front_ends.on_device(np.concatenate([audio, tail]))
    assert np.array_equal(front_ends.onset_envelope(on_device, len(audio)), envelope)
    again, again_frames = front_ends.pitch_profile(on_device, len(audio))
    assert again_frames == frames and np.array_equal(again, profile)


def test_tempo_and_key_on_the_device_are_those_of_the_numpy_path(front_ends):
    from jamcaps_desktop.audio.key import key_of_samples
    from jamcaps_desktop.audio.tempo import tempo_of_samples

    audio = _music(40.0)
    assert front_ends.tempo(audio) == tempo_of_samples(audio)
    assert front_ends.key(audio) == key_of_samples(audio)


@pytest.mark.parametrize(("rate", "names"), [(44100, ["FL", "FR"]), (48000, ["FC"]), (22050, ["FL", "FR"]),
                                             (8000, ["FL", "FR"]), (96000, ["FL", "FR"]),
                                             (48000, ["FL", "FR", "FC", "LFE", "BL", "BR"])])
def test_the_loudness_graph_matches_the_meter(front_ends, rate, names, tmp_path):
    rng = np.random.default_rng(rate + len(names))
    seconds = 21.37
    base = _music(seconds, 44100)
    from scipy.signal import resample_poly

    base = resample_poly(base, rate // 50, 882).astype(np.float32) if rate != 44100 else base
    planes = np.stack([base * (0.3 + 0.2 * i) + 0.01 * rng.standard_normal(len(base)).astype(np.float32)
                       for i in range(len(names))])
    planes[:, : rate * 3] *= 0.001  # a quiet start, for the gates
    meter = LoudnessMeter(rate)
    meter.feed(planes)
    expected = meter.result(names)
    native = save_native(planes, rate, names, str(tmp_path / "audio-"))
    assert native is not None and os.path.exists(native.array.path)
    got = front_ends.loudness(native)
    assert not os.path.exists(native.array.path)  # measured and removed
    assert got.sample_peak_dbfs == expected.sample_peak_dbfs
    assert got.integrated_lufs == pytest.approx(expected.integrated_lufs, abs=0.011)


def test_silence_has_no_loudness_but_a_short_file_is_left_to_the_worker(front_ends, tmp_path):
    silence = np.zeros((2, 44100 * 3), dtype=np.float32)
    native = save_native(silence, 44100, ["FL", "FR"], str(tmp_path / "audio-"))
    assert front_ends.loudness(native) == LoudnessMeter(44100).result(["FL", "FR"]) == Loudness(None, None)
    assert save_native(np.full((1, 1000), 0.5, dtype=np.float32), 44100, ["FC"], str(tmp_path / "audio-")) is None
    assert not list(tmp_path.iterdir())


def test_a_file_that_vanished_fails_that_track_only(front_ends, tmp_path):
    gone = NativeAudio(SharedArray(str(tmp_path / "gone.raw"), "<f2", (44100 * 2,)), 2, 4, 44100, ["FL", "FR"], 0.5)
    with pytest.raises(OSError):
        front_ends.loudness(gone)


def test_files_in_shared_memory_are_cleaned_up(tmp_path, monkeypatch):
    import jamcaps_desktop.analysis.native_audio as native_audio

    monkeypatch.setattr(native_audio, "SHARED_MEMORY", tmp_path)
    dead = tmp_path / "jamcaps-audio-999999999-abc.raw"  # a job that crashed an hour and more ago
    dead.write_bytes(b"x")
    os.utime(dead, (0, 0))
    recent = tmp_path / "jamcaps-audio-999999998-abc.raw"  # perhaps a live job another container runs
    recent.write_bytes(b"x")
    other = tmp_path / "someone-else.raw"
    other.write_bytes(b"x")
    target = native_audio.native_audio_folder()
    assert target is not None and not dead.exists() and recent.exists() and other.exists()
    kept = save_array(np.arange(10, dtype=np.float32), target)
    assert kept is not None and np.array_equal(kept.take(), np.arange(10, dtype=np.float32))
    assert not os.path.exists(kept.path)  # taken: the mapping holds the data, the file is gone
    left = save_array(np.ones(3, dtype=np.float32), target)  # never taken (a cancelled job)
    native_audio.remove_native_files(target)
    assert not os.path.exists(left.path) and other.exists()


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 5000), size=st.integers(1, 700), chunk=st.integers(1, 900))
def test_cutting_a_whole_signal_gives_the_streaming_windows(length, size, chunk):
    signal = np.arange(length, dtype=np.float32) + 1
    windower = Windower(size)
    streamed = []
    for start in range(0, length, chunk):
        streamed.extend(windower.feed(signal[start:start + chunk]))
    streamed.extend(windower.finish())
    cut = cut_windows(signal, size)
    assert len(cut) == len(streamed)
    for a, b in zip(cut, streamed, strict=True):
        assert np.array_equal(a, b)


def test_analysis_with_front_ends_on_the_device_gives_the_numpy_results(installed_models, make_track, tmp_path):
    from audio_fixtures import cadence, drum_pattern, encode_signal

    from jamcaps_desktop.analysis.analyze import analyze, track_features
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac", "ogg", "m4a", "wav")):
        make_track(music, fmt, name=f"t{i}")
    encode_signal(music / "beat.mp3", "mp3", drum_pattern(123.4, 20.0), 44100)
    encode_signal(music / "chords.flac", "flac", cadence(10, False, 16.0), 48000)
    results = []
    for on_device, decoded_samples in ((False, True), (True, True), (True, False)):
        with Library(tmp_path / f"lib{on_device}{decoded_samples}.sqlite") as library:
            scan(library, [music])
            summary = analyze(library, device="cpu", workers=2, front_ends_on_device=on_device,
                              decoded_samples=decoded_samples)
            assert summary.analysed == 7 and not summary.errors
            rows = library.conn.execute(
                "SELECT t.id, t.path, a.model, a.labels, a.embedding, a.windows FROM analyses a "
                "JOIN tracks t ON t.id = a.track_id ORDER BY t.path, a.model").fetchall()
            results.append([(path, model, json.loads(labels), np.frombuffer(embedding, np.float32), windows,
                              track_features(library, track_id)) for track_id, path, model, labels, embedding,
                             windows in rows])
    assert len(results[0]) == len(results[1]) == len(results[2]) == 14
    for (path, model, labels, embedding, windows, features), other, resampled in zip(*results, strict=True):
        assert resampled[5] == other[5]  # the workers resampling, or the device: the same measurements
        assert max(abs(resampled[2][k] - other[2][k]) for k in labels) < 2e-4
        assert (path, model, windows) == (*other[0:2], other[4])
        assert features == other[5]  # tempo, key, loudness and peak: the same to the stored decimals
        assert max(abs(labels[k] - other[2][k]) for k in labels) < 2e-4
        assert np.abs(embedding - other[3]).max() < 1e-4


def test_the_loudness_layout_from_decoded_chunks_is_that_of_the_whole_array(tmp_path):
    rng = np.random.default_rng(5)
    planes = rng.standard_normal((2, 44100 * 3 + 777)).astype(np.float32) * 0.1
    chunks = [planes[:, start:start + 8192] for start in range(0, planes.shape[1], 8192)]
    whole = save_native(planes, 44100, ["FL", "FR"], str(tmp_path / "a-"))
    pieces = save_native(chunks, 44100, ["FL", "FR"], str(tmp_path / "b-"))
    assert whole.peak == pieces.peak and whole.steps == pieces.steps == 30
    assert np.array_equal(whole.array.take(), pieces.array.take())


def test_a_track_whose_channels_change_midway_keeps_its_results(tmp_path):
    import av
    from audio_fixtures import encode_signal

    from jamcaps_desktop.analysis.hearing import hear
    from jamcaps_desktop.analysis.native_audio import native_audio_folder, remove_native_files

    t = np.arange(44100 * 3) / 44100
    stereo = encode_signal(tmp_path / "a.mp3", "mp3", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100)
    other = tmp_path / "b.mp3"
    with av.open(str(other), "w", format="mp3") as out:  # mono, as joining tools and bad rips append
        stream = out.add_stream("libmp3lame", rate=44100)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray((0.1 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)[None],
                                           format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(stereo.read_bytes() + other.read_bytes())
    target = native_audio_folder() or str(tmp_path / "shared-")
    try:
        for folder in (target, None):  # through shared memory, and measured in the worker
            heard = hear(str(joined), {}, True, folder)
            assert heard.error is None and heard.seconds == pytest.approx(6.0, abs=0.2)
            assert heard.native is None and heard.loudness is not None  # the first layout, in the worker
            assert heard.loudness.integrated_lufs == pytest.approx(-13.7, abs=1.0)  # the stereo part alone
    finally:
        remove_native_files(target)


def test_the_half_precision_cast_rounds_as_numpy_does():
    """The workers' float16 cast (ONNX Runtime's) gives numpy's values bit for bit: normal samples,
    overs beyond full scale, the smallest (subnormal) values, ties, zeros of both signs."""
    from jamcaps_desktop.analysis.native_audio import to_half

    rng = np.random.default_rng(3)
    edges = np.array([0.0, -0.0, 1.0, -1.0, 1.3, 65504.0, 6.1e-5, 5.96e-8, 2.98e-8, 1e-9, 1 + 2 ** -11, 0.5],
                     dtype=np.float32)
    source = np.concatenate([rng.standard_normal(100_003).astype(np.float32) * 0.3,
                             rng.standard_normal(1000).astype(np.float32) * 1e-6, edges, -edges])
    target = np.full(len(source) + 4, 7.0, dtype=np.float16)
    to_half(source, target[2:-2])
    assert np.array_equal(target[2:-2].view(np.uint16), source.astype(np.float16).view(np.uint16))
    assert np.all(target[:2] == 7.0) and np.all(target[-2:] == 7.0)  # nothing beside the slice is touched


def _write_pcm(path, planes: np.ndarray, rate: int, codec: str, container: str, sample_format: str) -> None:
    """Encode [channels, samples] float32 with a PCM or lossless codec at ``rate`` in ``sample_format``."""
    import av

    layout = {1: "mono", 2: "stereo"}[planes.shape[0]]
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = layout
        stream.format = sample_format
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes, dtype=np.float32), format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


@pytest.fixture
def shared_folder(tmp_path):
    from jamcaps_desktop.analysis.native_audio import native_audio_folder, remove_native_files

    target = native_audio_folder() or str(tmp_path / "shared-")
    yield target
    remove_native_files(target)


RAW_CASES = [  # file, codec, container, encoder format, rate, channels → what the decoder hands over
    ("a.mp3", "libmp3lame", "mp3", "fltp", 44100, 2, "float32", False),
    ("b.flac", "flac", "flac", "s16", 44100, 2, "int16", True),
    ("c.flac", "flac", "flac", "s32", 48000, 1, "int32", True),
    ("d.wav", "pcm_s16le", "wav", "s16", 22050, 2, "int16", True),
    ("e.wav", "pcm_f32le", "wav", "flt", 96000, 2, "float32", True),
    ("f.ogg", "libopus", "ogg", "flt", 48000, 2, "float32", None),  # Opus decodes as flt or fltp
    ("g.wav", "pcm_s16le", "wav", "s16", 16000, 1, "int16", True),
]


@pytest.mark.parametrize(("name", "codec", "container", "encoded", "rate", "channels", "dtype", "interleaved"),
                         RAW_CASES)
def test_decoded_samples_handed_over_as_they_are_give_the_workers_audio_and_loudness(
        front_ends, shared_folder, tmp_path, name, codec, container, encoded, rate, channels, dtype, interleaved):
    """The worker only decodes; the device resamples and measures: the same 16 kHz audio as FFmpeg's (to float
    rounding), the same loudness and peak as the worker's own measurement."""
    from jamcaps_desktop.analysis.hearing import hear
    from jamcaps_desktop.audio.decode import decode, iter_samples

    seconds = 6.3
    music = _music(seconds, 44100)
    if rate != 44100:
        from scipy.signal import resample_poly

        music = resample_poly(music, rate // 50, 882).astype(np.float32)
    planes = np.stack([music * (0.5 + 0.3 * c) for c in range(channels)])
    path = tmp_path / name
    _write_pcm(path, planes, rate, codec, container, encoded)

    heard = hear(str(path), {}, True, shared_folder)
    assert heard.error is None and heard.raw is not None and heard.audio is None and heard.native is None
    raw = heard.raw
    assert (raw.rate, raw.dtype, len(raw.names)) == (rate, dtype, channels)
    assert raw.length == sum(c.shape[-1] for c in iter_samples(str(path), rate, mono=False))
    if interleaved is not None:
        assert raw.interleaved == interleaved
    info = os.stat(raw.array.path)  # dense: no room left after a planar channel, every byte written
    assert info.st_size == raw.length * channels * np.dtype(raw.array.dtype).itemsize
    assert info.st_blocks * 512 >= info.st_size
    audio, loudness = front_ends.decoded(raw)
    assert not os.path.exists(raw.array.path)  # taken and removed
    expected = decode(str(path), 16000)
    assert len(audio) == len(expected) and heard.seconds == pytest.approx(len(expected) / 16000)
    assert np.abs(audio - expected).max() < 2e-6

    meter = LoudnessMeter(rate)
    for chunk in iter_samples(str(path), rate, mono=False):
        meter.feed(chunk)
    worker = meter.result(raw.names)
    assert loudness.integrated_lufs == pytest.approx(worker.integrated_lufs, abs=0.011)
    assert loudness.sample_peak_dbfs == pytest.approx(worker.sample_peak_dbfs, abs=1e-4)
    assert not [p for p in os.listdir(os.path.dirname(shared_folder) or ".") if p.startswith(
        os.path.basename(shared_folder))]


def test_tracks_the_device_does_not_take_are_resampled_in_the_worker(shared_folder, tmp_path, monkeypatch):
    """An unsigned 8-bit file, a rate FFmpeg resamples by interpolating phases, a track shorter than four
    loudness steps, one longer than a worker may hold and a planar one longer than its container says: each
    falls back to the worker's resampling, with the same audio the CPU analysis hears."""
    import jamcaps_desktop.analysis.hearing as hearing_module
    from jamcaps_desktop.analysis.hearing import hear
    from jamcaps_desktop.audio.decode import decode

    music = _music(3.0, 44100)
    cases = {"u8.wav": ("pcm_u8", "u8", 44100, music), "odd.wav": ("pcm_s16le", "s16", 44056, music),
             "short.wav": ("pcm_s16le", "s16", 44100, music[:12000]),
             "long.wav": ("pcm_s16le", "s16", 44100, np.tile(music, 4))}
    cases["understated.mp3"] = ("libmp3lame", "fltp", 44100, np.tile(music, 3))  # planar, duration understated
    held = hearing_module.RAW_BYTES
    for name, (codec, encoded, rate, signal) in cases.items():
        path = tmp_path / name
        container = "mp3" if name.endswith(".mp3") else "wav"
        _write_pcm(path, np.stack([signal, signal * 0.5]), rate, codec, container, encoded)
        if name == "understated.mp3":  # taken as it is, unless its container understated its duration
            heard = hear(str(path), {}, True, shared_folder)
            assert heard.raw is not None
            _discard_heard(heard)
        monkeypatch.setattr(hearing_module, "RAW_BYTES", 800_000 if name == "long.wav" else held)
        monkeypatch.setattr(hearing_module, "RAW_ROOM_MARGIN", 0.5)  # as if the file stated half its duration
        heard = hear(str(path), {}, True, shared_folder)
        assert heard.error is None and heard.raw is None, name
        audio = heard.audio.take() if isinstance(heard.audio, SharedArray) else heard.audio
        assert np.array_equal(audio, decode(str(path), 16000)), name
        _discard_heard(heard)
        monkeypatch.undo()


def _discard_heard(heard) -> None:
    from jamcaps_desktop.analysis.hearing import discard

    discard(heard)


def test_a_full_shared_memory_leaves_no_file_and_the_worker_resamples(shared_folder, tmp_path, monkeypatch):
    """The folder fills up while a worker writes a track's samples, or as it moves a planar track's channels
    together: its file goes, and the worker hands the track over the other way (which here finds room)."""
    from jamcaps_desktop.analysis import native_audio
    from jamcaps_desktop.analysis.hearing import hear

    music = _music(9.0, 44100)
    paths = []
    for name, codec, container, encoded in (("a.flac", "flac", "flac", "s16"), ("b.mp3", "libmp3lame", "mp3", "fltp")):
        paths.append(tmp_path / name)
        _write_pcm(paths[-1], np.stack([music, music * 0.5]), 44100, codec, container, encoded)
    real_pwrite = os.pwrite
    for path in paths:
        writes = []

        def filling_pwrite(fd, data, offset, writes=writes):  # the third write finds the folder full
            writes.append(offset)
            return real_pwrite(fd, data, offset) if len(writes) < 3 else len(data) // 2

        before = _job_files(shared_folder)
        monkeypatch.setattr(native_audio.os, "pwrite", filling_pwrite)
        heard = hear(str(path), {}, True, shared_folder)
        monkeypatch.setattr(native_audio.os, "pwrite", real_pwrite)
        assert len(writes) == 3 and heard.error is None and heard.raw is None and heard.audio is not None
        _discard_heard(heard)
        assert _job_files(shared_folder) == before
    # full just as the planar channels are moved together at the end
    monkeypatch.setattr(native_audio.os, "pread", lambda fd, size, offset: b"")
    heard = hear(str(paths[1]), {}, True, shared_folder)
    assert heard.error is None and heard.raw is None and heard.audio is not None
    _discard_heard(heard)
    assert _job_files(shared_folder) == before


def test_eight_channels_are_handed_over_and_mixed_down(front_ends, shared_folder, tmp_path):
    from audio_fixtures import encode_planes

    from jamcaps_desktop.analysis.hearing import hear
    from jamcaps_desktop.audio.decode import decode

    music = _music(4.0, 48000)
    planes = np.stack([music * (0.2 + 0.05 * c) for c in range(8)])
    path = encode_planes(tmp_path / "surround.m4a", planes, 48000, "7.1")
    heard = hear(str(path), {}, True, shared_folder)
    assert heard.error is None and heard.raw is not None and len(heard.raw.names) == 8
    audio, loudness = front_ends.decoded(heard.raw)
    expected = decode(str(path), 16000)
    assert len(audio) == len(expected) and np.abs(audio - expected).max() < 2e-6
    assert loudness.integrated_lufs is not None


def _job_files(target: str) -> set[str]:
    """This job's files in its shared-memory folder (other jobs, other test runs, may write there too)."""
    folder, prefix = os.path.split(target)
    return {name for name in os.listdir(folder or ".") if name.startswith(prefix)}


def test_a_raw_file_that_vanished_fails_that_track_only(front_ends, tmp_path):
    from jamcaps_desktop.analysis.native_audio import RawAudio

    gone = RawAudio(SharedArray(str(tmp_path / "gone.raw"), "<i2", (44100 * 2, 2)), 44100, True, ["FL", "FR"])
    with pytest.raises(OSError):
        front_ends.decoded(gone)


class _CountingSession:
    """A model that labels each window with its first value and embeds it as it is."""

    def __init__(self, fail_at: int | None = None, slow: bool = False) -> None:
        self.calls, self.fail_at, self.slow = 0, fail_at, slow
        self.sizes: list[int] = []

    def run(self, names, feeds, options=None):
        self.calls += 1
        self.sizes.append(len(feeds["x"]))
        if self.calls == self.fail_at:
            raise RuntimeError("the device was lost")
        if self.slow:  # the next batch is put together meanwhile: this one must not change under it
            time.sleep(0.02)
        windows = feeds["x"]  # [n, values], or model inputs of any shape (a warm-up's)
        return [windows.reshape(len(windows), -1)[:, :1] * np.ones((1, 3), dtype=np.float32), windows]

    def get_providers(self):
        return ["CPUExecutionProvider"]


class _PassThroughFrontEnds:
    device_type = "cpu"

    def features(self, group, batch, shrink=False):
        return batch


def _batcher_models(sessions):
    from jamcaps_desktop.analysis.analyze import _Loaded

    spec = InputSpec(FRONT_ENDS["musicnn-logmel"], 2.992, 187)
    return [_Loaded(f"m{i}", "1", ["a", "b", "c"], session, spec, "x", "labels", "embedding")
            for i, session in enumerate(sessions)]


@pytest.mark.parametrize("slow", [False, True], ids=["quick models", "slow models"])
@pytest.mark.parametrize("full_batches", [False, True])
def test_batches_in_flight_give_each_track_its_own_windows_in_order(full_batches, slow):
    """Batches of four windows spanning tracks of 0–12 windows, each batch's two models running while the
    next batch is put together: every track gets the sums of exactly its windows, tracks come back in
    order, and only once every window of theirs has been through both models. With ``full_batches`` (a
    GPU) the last batch is filled up with silence, which no track's sums take in."""
    from jamcaps_desktop.analysis.analyze import _Batcher
    from jamcaps_desktop.analysis.hearing import Heard

    models = _batcher_models([_CountingSession(slow=slow), _CountingSession(slow=slow)])
    group = models[0].group
    batcher = _Batcher(models, 4, _PassThroughFrontEnds(), full_batches=full_batches)
    counts = [1, 7, 3, 0, 12, 5, 2]
    windows = {i: np.stack([[i + w / 100, -i] for w in range(n)]).astype(np.float32) if n else None
               for i, n in enumerate(counts)}
    back = []
    try:
        for i in range(len(counts)):
            heard = Heard(inputs={group: windows[i]} if counts[i] else {})
            back += batcher.add({"id": i}, heard)
            assert all(w.finished() for w in back)
        back += batcher.drain()
    finally:
        batcher.close()
    assert [w.row["id"] for w in back] == list(range(len(counts)))
    for work in back:
        i = work.row["id"]
        for model in models:
            labels, embedding = work.sums[model.name]
            if not counts[i]:
                assert labels is None and work.done[group] == 0
                continue
            assert work.done[group] == counts[i]
            assert np.allclose(labels, windows[i][:, 0].sum() * np.ones(3))
            assert np.allclose(embedding, windows[i].sum(axis=0))
    assert models[0].session.calls == models[1].session.calls == -(-sum(counts) // 4)
    sizes = models[0].session.sizes
    assert sizes == ([4] * len(sizes) if full_batches else [4] * (len(sizes) - 1) + [sum(counts) % 4 or 4])


def test_a_batch_being_run_is_not_overwritten_by_the_next_one_put_together():
    """Batches of three windows from tracks of two, so that every batch joins pieces of two tracks in the
    batcher's own buffers while the one before is still being run (slowly)."""
    from jamcaps_desktop.analysis.analyze import _Batcher
    from jamcaps_desktop.analysis.hearing import Heard

    models = _batcher_models([_CountingSession(slow=True)])
    group = models[0].group
    batcher = _Batcher(models, 3, _PassThroughFrontEnds(), full_batches=True)
    windows = [np.array([[i + 0.25, -i], [i + 0.5, -i]], dtype=np.float32) for i in range(9)]
    back = []
    try:
        for i, track in enumerate(windows):
            back += batcher.add({"id": i}, Heard(inputs={group: track}))
        back += batcher.drain()
    finally:
        batcher.close()
    assert [w.row["id"] for w in back] == list(range(9))
    for work in back:
        _labels, embedding = work.sums[models[0].name]
        assert np.allclose(embedding, windows[work.row["id"]].sum(axis=0)), work.row["id"]


def test_a_warm_up_runs_every_model_on_a_full_batch_and_counts_nothing():
    from jamcaps_desktop.analysis.analyze import _Batcher
    from jamcaps_desktop.analysis.hearing import Heard

    models = _batcher_models([_CountingSession(), _CountingSession()])
    batcher = _Batcher(models, 4, _PassThroughFrontEnds(), full_batches=True)
    try:
        batcher.warm_up()  # on the model inputs of silence, as the CPU front end makes them: no device needed
        assert [m.session.sizes for m in models] == [[4], [4]]
        back = batcher.add({"id": 0}, Heard(inputs={models[0].group: np.ones((2, 2), dtype=np.float32)}))
        back += batcher.drain()
    finally:
        batcher.close()
    assert back[0].done[models[0].group] == 2
    assert np.allclose(back[0].sums["m0"][1], [2.0, 2.0])


def test_a_model_failing_in_flight_stops_the_job_with_its_error():
    from jamcaps_desktop.analysis.analyze import _Batcher
    from jamcaps_desktop.analysis.hearing import Heard

    models = _batcher_models([_CountingSession(fail_at=2)])
    batcher = _Batcher(models, 4, _PassThroughFrontEnds())
    group = models[0].group
    try:
        with pytest.raises(RuntimeError, match="device was lost"):
            for i in range(10):
                batcher.add({"id": i}, Heard(inputs={group: np.ones((3, 2), dtype=np.float32)}))
            batcher.drain()
    finally:
        batcher.close()  # returns: nothing is left running


def test_a_track_the_device_fails_to_measure_is_decoded_again_and_kept(installed_models, make_track, tmp_path,
                                                                       monkeypatch):
    """The device failing on one track's samples (its memory, say) costs that track a second decode, not its
    results."""
    from jamcaps_desktop.analysis.analyze import analyze, track_features
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac", "wav", "ogg")):
        make_track(music, fmt, name=f"t{i}")
    real = DeviceFrontEnds.decoded_here_and_there
    failed = []

    def failing(self, raw):
        if raw.dtype == "int16" and raw.interleaved and not failed:  # the first 16-bit file
            failed.append(raw.array.path)
            raw.remove()
            raise RuntimeError("out of device memory")
        return real(self, raw)

    results = []
    for fail in (False, True):
        if fail:
            monkeypatch.setattr(DeviceFrontEnds, "decoded_here_and_there", failing)
        with Library(tmp_path / f"lib{fail}.sqlite") as library:
            scan(library, [music])
            summary = analyze(library, device="cpu", workers=2, front_ends_on_device=True)
            assert summary.analysed == 4 and not summary.errors
            results.append([(path, json.loads(labels), track_features(library, track_id)) for track_id, path, labels in
                            library.conn.execute("SELECT t.id, t.path, a.labels FROM analyses a JOIN tracks t "
                                                 "ON t.id = a.track_id ORDER BY t.path, a.model")])
    assert len(failed) == 1 and not os.path.exists(failed[0])
    for (path, labels, features), (other_path, other_labels, other_features) in zip(*results, strict=True):
        assert path == other_path and features == other_features
        assert max(abs(labels[k] - other_labels[k]) for k in labels) < 2e-4


@pytest.mark.parametrize("failing_part", ["front ends", "model"])
def test_a_session_that_cannot_be_made_stops_the_job_with_its_error(installed_models, make_track, tmp_path,
                                                                    monkeypatch, failing_part):
    """The decoding workers start before the models' and the front ends' sessions are made: where making one
    fails, the job ends with that error, the workers stop, and no track's audio is left in shared memory."""
    from jamcaps_desktop.analysis import analyze as analyze_module
    from jamcaps_desktop.analysis import kept_sessions, native_audio
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac", "wav", "ogg", "mp3")):
        make_track(music, fmt, name=f"t{i}")

    def failing(*_args, **_kwargs):
        time.sleep(0.5)  # the workers are decoding by now
        raise RuntimeError("no device memory for the sessions")

    folders: list[str | None] = []

    def recorded_folder():
        folders.append(native_audio.native_audio_folder())
        return folders[-1]

    monkeypatch.setattr(analyze_module, "native_audio_folder", recorded_folder)
    if failing_part == "front ends":
        monkeypatch.setattr(DeviceFrontEnds, "__init__", failing)
    else:
        monkeypatch.setattr(kept_sessions, "make_session", failing)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        with pytest.raises(RuntimeError, match="no device memory"):
            analyze_module.analyze(library, device="cpu", workers=2, front_ends_on_device=True)
        assert library.conn.execute("SELECT COUNT(*) FROM analyses").fetchone()[0] == 0
    assert not multiprocessing.active_children()  # the decoding workers stopped
    if not folders or folders[0] is None:
        pytest.skip("no shared memory on this machine")
    assert not glob.glob(folders[0] + "*")


def test_tracks_are_decoded_while_the_models_sessions_are_made(installed_models, make_track, tmp_path,
                                                               monkeypatch):
    """Making the models' sessions takes seconds on a GPU (CUDA starts): the workers decode meanwhile."""
    from jamcaps_desktop.analysis import analyze as analyze_module
    from jamcaps_desktop.analysis import native_audio
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac", "wav", "ogg", "mp3", "flac")):
        make_track(music, fmt, name=f"t{i}")
    folders: list[str] = []
    seen_while_opening: list[bool] = []
    opening = analyze_module._open

    def recorded_folder():
        folders.append(native_audio.native_audio_folder())
        return folders[-1]

    def slow_open(model, device):
        if folders[0] is None:
            pytest.skip("no shared memory on this machine")
        deadline = time.monotonic() + 30
        while not glob.glob(folders[0] + "*") and time.monotonic() < deadline:  # a worker's decoded audio
            time.sleep(0.02)
        seen_while_opening.append(bool(glob.glob(folders[0] + "*")))
        opening(model, device)

    monkeypatch.setattr(analyze_module, "native_audio_folder", recorded_folder)
    monkeypatch.setattr(analyze_module, "_open", slow_open)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        summary = analyze_module.analyze(library, device="cpu", workers=2, front_ends_on_device=True)
    assert seen_while_opening and seen_while_opening[0]
    assert summary.analysed == 6 and not summary.errors
    assert not glob.glob(folders[0] + "*")


def test_sessions_made_ahead_that_fail_cost_the_job_nothing(installed_models, make_track, tmp_path, monkeypatch):
    from jamcaps_desktop.analysis.analyze import analyze
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac", "wav", "ogg")):
        make_track(music, fmt, name=f"t{i}")

    def failing(self, formats):
        raise RuntimeError("a graph could not be built")

    monkeypatch.setattr(DeviceFrontEnds, "prepare", failing)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        summary = analyze(library, device="cpu", workers=2, front_ends_on_device=True)
    assert summary.analysed == 4 and not summary.errors


def test_a_session_asked_for_by_several_threads_at_once_is_made_once(monkeypatch):
    """Measuring threads meeting a new sample format together wait for one session instead of each making
    its own; sessions for different formats are made one at a time (ONNX Runtime's CUDA provider failed to
    start beside another); a session that fails to be made is tried again by the next track."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from jamcaps_desktop.analysis import device_front_ends as module

    front_ends = DeviceFrontEnds({"musicnn": InputSpec(FRONT_ENDS["musicnn-logmel"], 2.992, 187)}, "cpu")
    made, failures, making, most = [], [1], [0], [0]
    gate = threading.Barrier(6)
    count = threading.Lock()

    def slow_make(model, device, **kwargs):
        if failures and failures.pop():
            raise RuntimeError("out of device memory")
        with count:
            making[0] += 1
            most[0] = max(most[0], making[0])
        made.append(kwargs["name"])
        time.sleep(0.2)  # every thread asks while the first is still making it
        try:
            return make_session(model, device, **kwargs)
        finally:
            with count:
                making[0] -= 1

    monkeypatch.setattr(module, "make_session", slow_make)
    key = (44100, "int16", True)
    with pytest.raises(RuntimeError, match="out of device memory"):
        front_ends._decoded_session(key)

    def ask(index):
        gate.wait()
        return front_ends._decoded_session(key if index < 4 else (48000, "float32", False))

    with ThreadPoolExecutor(6) as pool:
        sessions = list(pool.map(ask, range(6)))
    assert len(made) == 2 and most[0] == 1
    assert all(session is sessions[0] for session in sessions[:4]) and sessions[4] is sessions[5]


def test_graphs_built_ahead_are_the_graphs_and_are_handed_over_once(monkeypatch):
    """The front ends' graphs built in a thread of their own are byte for byte the graphs built in place; a
    graph is handed over once (asked again, or never queued, it is built in place); one whose building
    fails ahead is built again in place; closing drops what was not taken."""
    import threading

    from jamcaps_desktop.analysis import device_front_ends as module

    group = "musicnn"
    spec = InputSpec(FRONT_ENDS["musicnn-logmel"], 2.992, 187)
    key = (44100, "int16", True)
    built = module.GraphsAhead({group: spec}, [key])
    deadline = time.monotonic() + 60
    while not all(f.done() for f in built._futures.values()) and time.monotonic() < deadline:
        time.sleep(0.05)  # every graph built ahead
    assert built.graph(("pitch",), lambda: b"built in place") == graphs.pitch_graph().SerializeToString()
    assert built.graph(("window", group), lambda: b"built in place") == module._window_graph(spec)
    assert built.graph(("decoded", key), lambda: b"built in place") == (
        graphs.decoded_audio_graph(*key).SerializeToString())
    assert built.graph(("pitch",), lambda: b"built in place") == b"built in place"  # handed over once
    assert built.graph(("never queued",), lambda: b"built in place") == b"built in place"

    release = threading.Event()
    calls: list[str] = []

    def slow_onsets() -> bytes:
        calls.append("onset")
        release.wait(10)
        return b"onsets"

    def failing() -> bytes:
        calls.append("pitch")
        raise RuntimeError("out of memory")

    monkeypatch.setattr(module, "_onset_graph", slow_onsets)
    monkeypatch.setattr(module, "_pitch_graph", failing)
    monkeypatch.setattr(module, "_window_graph", lambda spec: b"window")
    built = module.GraphsAhead({group: spec}, [key])
    window = built._futures[("window", group)]
    deadline = time.monotonic() + 10
    while not window.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert built.graph(("window", group), lambda: b"in place") == b"window"  # built ahead
    deadline = time.monotonic() + 10
    while "onset" not in calls and time.monotonic() < deadline:
        time.sleep(0.01)
    # the decoded graph waits behind the onset graph: taken before its turn, it is built in place
    assert built.graph(("decoded", key), lambda: b"decoded in place") == b"decoded in place"
    release.set()
    assert built.graph(("onset",), lambda: b"in place") == b"onsets"
    pitch = built._futures[("pitch",)]
    deadline = time.monotonic() + 10
    while not pitch.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "pitch" in calls and pitch.exception() is not None  # its building failed ahead...
    assert built.graph(("pitch",), lambda: b"pitch in place") == b"pitch in place"  # ...so it is built in place
    built = module.GraphsAhead({group: spec}, [key])
    built.close()
    assert built.graph(("pitch",), lambda: b"after closing") == b"after closing"


def test_a_gpu_that_fails_to_start_leaves_the_models_on_the_cpu_with_the_same_results(
        installed_models, make_track, tmp_path, monkeypatch):
    """The workers start before the sessions, on the word of a CUDA provider being there; where it then fails
    to start, the job says so and decodes again the CPU's way (the workers computing the models' inputs),
    leaving nothing in shared memory, and every track gets the results a CPU job gives. Run again, with
    nothing left to do, the job makes no session and names no device."""
    import logging

    from jamcaps_desktop.analysis import analyze as analyze_module
    from jamcaps_desktop.analysis import native_audio
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac", "wav", "ogg")):
        make_track(music, fmt, name=f"t{i}")
    folders: list[str | None] = []

    def recorded_folder():
        folders.append(native_audio.native_audio_folder())
        return folders[-1]

    monkeypatch.setattr(analyze_module, "native_audio_folder", recorded_folder)
    results = []
    for expected_gpu in (False, True):
        monkeypatch.setattr(analyze_module, "cuda_wanted", lambda _device, gpu=expected_gpu: gpu)
        with Library(tmp_path / f"lib{expected_gpu}.sqlite") as library:
            scan(library, [music])
            with _captured_warnings(logging.getLogger("jamcaps_desktop.analysis.analyze")) as warnings:
                summary = analyze_module.analyze(library, device="cpu", workers=2)
            assert summary.analysed == 4 and not summary.errors
            assert summary.device == "CPUExecutionProvider"
            assert any("CUDA could not start" in w for w in warnings) == expected_gpu
            again = analyze_module.analyze(library, device="cpu", workers=2)
            assert again.analysed == 0 and again.skipped == 4 and again.device == ""
            results.append(library.conn.execute(
                "SELECT t.path, a.model, a.labels, a.windows, f.bpm, f.key, round(f.loudness_lufs, 2) "
                "FROM analyses a JOIN tracks t ON t.id = a.track_id JOIN track_features f ON f.track_id = t.id "
                "ORDER BY t.path, a.model").fetchall())
    assert len(folders) == 1  # the GPU's way was taken once, then left
    assert not (folders[0] and glob.glob(folders[0] + "*"))
    assert len(results[0]) == 8
    for cpu, fallback in zip(*results, strict=True):
        assert cpu[:2] == fallback[:2] and cpu[3:] == fallback[3:]
        cpu_labels, fallback_labels = json.loads(cpu[2]), json.loads(fallback[2])
        assert cpu_labels.keys() == fallback_labels.keys()
        assert max(abs(cpu_labels[k] - fallback_labels[k]) for k in cpu_labels) < 1e-3


class _captured_warnings:
    def __init__(self, logger):
        import logging

        self.logger, self.lines = logger, []
        self.handler = logging.Handler(logging.WARNING)
        self.handler.emit = lambda record: self.lines.append(record.getMessage())

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self.lines

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


class _WithoutVectorRuns:
    """A session as an onnxruntime without ``run_with_ortvaluevector`` offers it."""

    def __init__(self, session) -> None:
        self._session = session

    def __getattr__(self, name):
        if name == "run_with_ortvaluevector":
            raise AttributeError(name)
        return getattr(self._session, name)


@pytest.mark.parametrize("vector_runs", [True, False], ids=["value vectors", "io binding"])
def test_runs_that_copy_inside_the_run_give_the_same_outputs_where_asked(vector_runs):
    import onnxruntime as ort

    from jamcaps_desktop.models.engine import run_values

    rng = np.random.default_rng(5)
    raw = (rng.standard_normal((3 * 44100, 2)) * 8000).astype(np.int16)
    session = _session(graphs.decoded_audio_graph(44100, "int16", True))
    expected = session.run(None, {graphs.RAW: raw})
    runner = session if vector_runs else _WithoutVectorRuns(session)
    fetches = {graphs.AUDIO_HOST: "cpu", graphs.PEAK: "cpu", graphs.AUDIO: "cpu"}
    audio_host, peak, audio = run_values(runner, {graphs.RAW: raw}, fetches)
    assert all(isinstance(value, ort.OrtValue) and value.device_name() == "cpu" for value in (audio_host, peak, audio))
    assert np.array_equal(audio.numpy(), expected[0]) and np.array_equal(audio_host.numpy(), audio.numpy())
    assert float(peak.numpy()) == float(expected[2]) == pytest.approx(np.abs(raw).max() / 2**15)
    # an OrtValue already made is fed as it is, and the array handed over is left as it was
    before = raw.copy()
    again = run_values(runner, {graphs.RAW: ort.OrtValue.ortvalue_from_numpy(raw)}, {graphs.AUDIO: "cpu"})[0]
    assert np.array_equal(again.numpy(), expected[0]) and np.array_equal(raw, before)


def test_the_audio_handed_to_the_host_outlives_the_run_that_made_it(front_ends, tmp_path):
    """The 16 kHz audio is a view of the run's host output: it must stay valid once the run's values are gone."""
    import gc

    from jamcaps_desktop.analysis.native_audio import RawAudio

    rng = np.random.default_rng(6)
    tracks = [(rng.standard_normal((2, 44100 * 5)) * 0.3).astype(np.float32) for _ in range(3)]
    results = []
    for samples in tracks:
        array = save_array(samples, str(tmp_path / "raw-"))
        audio, _loudness = front_ends.decoded(RawAudio(array, 44100, False, ["FL", "FR"]))
        results.append(audio)
        gc.collect()
    _garbage = [np.full(44100 * 10, 7.0, dtype=np.float32) for _ in range(20)]
    for samples, audio in zip(tracks, results, strict=True):
        again, _loudness = front_ends.decoded(RawAudio(save_array(samples, str(tmp_path / "raw-")), 44100, False,
                                                       ["FL", "FR"]))
        assert np.array_equal(audio, again) and 0.05 < float(np.abs(audio).mean()) < 1.0


class _Handed:
    """Heard tracks as the decoding workers hand them over (an iterator the measuring closes)."""

    def __init__(self, heard) -> None:
        self._heard = iter(heard)
        self.closed = False

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._heard)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("megabytes", "most"), [(10, 8), (300, 3)], ids=["short tracks", "long tracks"])
def test_the_measuring_threads_hold_no_more_samples_than_the_device_can_take(monkeypatch, megabytes, most):
    """Eight tracks at once, unless their decoded samples pass ``MEASURED_BYTES`` (768 MB): then only one
    more than fits; and the tracks come out in order, each measured once."""
    import threading
    from concurrent.futures import Future

    from jamcaps_desktop.analysis import analyze as analysis
    from jamcaps_desktop.analysis.hearing import Heard
    from jamcaps_desktop.analysis.native_audio import RawAudio

    assert analysis.MEASURE_THREADS == 8 and analysis.MEASURED_BYTES == 768 * 1024 * 1024
    running, peak, measured, lock = [0], [0], [], threading.Lock()

    def measure(front_ends, heard, groups):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.03)
        with lock:
            running[0] -= 1
            measured.append(heard.source)

    monkeypatch.setattr(analysis, "_measure_on_device", measure)
    samples = megabytes * 1024 * 1024 // 4
    heard = [Heard(source=f"t{i}", raw=RawAudio(SharedArray(f"/nonexistent/{i}", "<f4", (2, samples // 2)), 44100,
                                                 False, ["FL", "FR"])) for i in range(24)]
    handed = _Handed(heard)
    ready: Future = Future()
    ready.set_result(object())
    ahead = analysis._MeasuredAhead(handed, ready, [])
    try:
        out = [track.source for track in ahead]
    finally:
        ahead.close()
    assert out == [f"t{i}" for i in range(24)] and sorted(measured) == sorted(out)
    assert peak[0] == most and handed.closed
