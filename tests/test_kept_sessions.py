"""Sessions kept between analysis jobs, and made ready ahead of them."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

from jamcaps_desktop.analysis import analyze as analyze_module
from jamcaps_desktop.analysis import device_front_ends, kept_sessions
from jamcaps_desktop.analysis.analyze import analyze, get_ready, likely_formats
from jamcaps_desktop.analysis.device_front_ends import DeviceFrontEnds
from jamcaps_desktop.audio.frontends import FRONT_ENDS, InputSpec
from jamcaps_desktop.library import Library
from jamcaps_desktop.models import registry
from jamcaps_desktop.scan.scanner import scan


def _counted(monkeypatch) -> list[str]:
    """Every session made, by name, for the models and for the front ends."""
    made: list[str] = []

    def counting(real):
        def make(model, device="auto", **kwargs):
            made.append(kwargs.get("name") or (os.path.basename(os.path.dirname(model)) if not isinstance(model, bytes)
                                               else "a graph"))
            return real(model, device, **kwargs)
        return make

    monkeypatch.setattr(kept_sessions, "make_session", counting(kept_sessions.make_session))
    monkeypatch.setattr(device_front_ends, "make_session", counting(device_front_ends.make_session))
    return made


def _labels(library: Library) -> list[tuple[str, str, dict[str, float]]]:
    return [(path, model, json.loads(labels)) for path, model, labels in library.conn.execute(
        "SELECT t.path, a.model, a.labels FROM analyses a JOIN tracks t ON t.id = a.track_id "
        "WHERE a.status = 'ok' ORDER BY t.path, a.model")]


def test_a_second_job_uses_the_sessions_the_first_made_until_a_model_is_installed_again(
        installed_models, make_track, tmp_path, monkeypatch):
    """The window analyses folder after folder in one process: the second job makes no session (and gives
    the results a fresh process gives); a model whose files change on disk gets a new one."""
    made = _counted(monkeypatch)
    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac")):
        make_track(music, fmt, name=f"a{i}")
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        first = analyze(library, device="cpu", workers=2, front_ends_on_device=True)
        assert first.analysed == 2 and not first.errors
        assert {"musicnn-msd", "musicnn-mtt", "the onset front end", "the key front end"} <= set(made)

        made.clear()
        for i, fmt in enumerate(("mp3", "flac")):
            make_track(music, fmt, name=f"b{i}")
        scan(library, [music])
        second = analyze(library, device="cpu", workers=2, front_ends_on_device=True)
        assert second.analysed == 2 and not second.errors
        assert made == []
        kept_labels = _labels(library)

        model_file = registry.installed("musicnn-mtt").onnx_path
        stat = model_file.stat()
        os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        make_track(music, "mp3", name="c0")
        scan(library, [music])
        third = analyze(library, device="cpu", workers=2, front_ends_on_device=True)
        assert third.analysed == 1 and made == ["musicnn-mtt"]

    kept_sessions.release()  # the same tracks, in a process that kept nothing
    with Library(tmp_path / "fresh.sqlite") as library:
        scan(library, [music])
        analyze(library, device="cpu", workers=2, front_ends_on_device=True)
        fresh = {(os.path.basename(path), model): labels for path, model, labels in _labels(library)}
    for path, model, labels in kept_labels:
        other = fresh[(os.path.basename(path), model)]
        assert max(abs(labels[k] - other[k]) for k in labels) < 1e-5


def test_a_job_waits_for_sessions_being_made_ahead_and_uses_them(installed_models, make_track, tmp_path,
                                                                 monkeypatch):
    """Sessions made ahead (the window, as it opens) are made one thread at a time with a job's own: a job
    started meanwhile waits for them, then makes none."""
    made = _counted(monkeypatch)
    music = tmp_path / "music"
    make_track(music, "mp3", name="t0")
    make_track(music, "flac", name="t1")
    release = threading.Event()
    holding = threading.Event()

    def ahead() -> None:
        with kept_sessions.making():
            holding.set()
            release.wait(20)
            for name in ("musicnn-msd", "musicnn-mtt"):
                kept_sessions.model_session(name, "cpu")

    thread = threading.Thread(target=ahead)
    thread.start()
    holding.wait(20)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        threading.Timer(0.5, release.set).start()
        summary = analyze(library, device="cpu", workers=2, front_ends_on_device=True)
    thread.join()
    assert summary.analysed == 2 and not summary.errors
    assert made.count("musicnn-msd") == 1 and made.count("musicnn-mtt") == 1  # made ahead, not again


def test_getting_ready_without_a_gpu_makes_nothing_and_says_so(installed_models, monkeypatch):
    made = _counted(monkeypatch)
    assert get_ready("cpu") is False
    assert made == []
    # a GPU seems usable, but CUDA cannot start: the sessions are kept (on the CPU), and the answer is no
    monkeypatch.setattr(analyze_module, "cuda_wanted", lambda device: True)
    assert get_ready("auto") is False
    assert sorted(made) == ["musicnn-msd", "musicnn-mtt"]


def test_getting_ready_names_a_model_that_is_not_installed(models_dir):
    with pytest.raises(registry.ModelError, match="jamcaps models install"):
        get_ready("cuda", models=["musicnn-msd"])


def test_the_formats_made_ready_are_those_of_the_librarys_tracks(library, make_track, tmp_path):
    music = tmp_path / "music"
    for i, fmt in enumerate(("flac", "flac", "mp3", "wav")):
        make_track(music, fmt, name=f"t{i}")
    scan(library, [music])
    formats = likely_formats(library)
    assert formats[0] == (44100, "int16", True)  # FLAC's decoder hands over interleaved 16-bit samples
    assert (44100, "float32", False) in formats  # MP3's, planar floats


def test_warming_up_the_front_ends_makes_the_formats_sessions_and_leaves_the_results_alone():
    spec = InputSpec(FRONT_ENDS["musicnn-logmel"], 2.992, 187)
    front_ends = DeviceFrontEnds({"musicnn": spec}, "cpu")
    rng = np.random.default_rng(3)
    audio = (0.1 * rng.standard_normal(16000 * 12)).astype(np.float32)
    before = (front_ends.onset_envelope(audio), front_ends.pitch_profile(audio))
    formats = [(44100, "int16", True), (48000, "float32", False)]
    front_ends.warm_up(formats)
    assert {("decoded", key) for key in formats} <= set(front_ends._sessions)
    after = (front_ends.onset_envelope(audio), front_ends.pitch_profile(audio))
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1][0], after[1][0])


def test_warm_ups_made_ahead_give_the_gpu_memory_back_and_jobs_do_not(monkeypatch):
    """Sessions kept ready while the app waits give back what their first runs took of the GPU's memory
    (a job takes it again as it runs); a job's own runs keep their memory for the next batch."""
    from jamcaps_desktop.analysis.analyze import _Batcher
    from jamcaps_desktop.models import engine

    class _Session:
        def __init__(self, provider="CUDAExecutionProvider"):
            self.provider = provider

        def get_providers(self):
            return [self.provider]

        def run(self, names, feeds, options=None):
            return [np.zeros((len(feeds["x"]), 2), np.float32)]

    key = "memory.enable_memory_arena_shrinkage"
    assert engine.run_options(_Session(), shrink=True).get_run_config_entry(key) == "gpu:0"
    with pytest.raises(RuntimeError):
        engine.run_options(_Session()).get_run_config_entry(key)
    with pytest.raises(RuntimeError):  # a session on the CPU has no GPU memory to give back
        engine.run_options(_Session("CPUExecutionProvider"), shrink=True).get_run_config_entry(key)

    asked: list[bool] = []
    monkeypatch.setattr(analyze_module, "run_options", lambda session, shrink=False: asked.append(shrink))

    spec = InputSpec(FRONT_ENDS["musicnn-logmel"], 2.992, 187)
    model = analyze_module._Loaded("m", "1", ["a", "b"], _Session(), spec, "x", "labels", None)
    batcher = _Batcher([model], 2)
    batcher.warm_up(shrink=True)
    batcher.warm_up()
    assert asked == [True, False]
