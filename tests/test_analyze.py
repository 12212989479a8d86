from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from jamcaps_desktop.analysis.analyze import analyze, track_analyses
from jamcaps_desktop.cli.main import cli
from jamcaps_desktop.library.queries import find_track
from jamcaps_desktop.models import registry
from jamcaps_desktop.scan.scanner import scan


def test_analysis_stores_labels_and_embeddings_and_resumes(installed_models, library, make_track, tmp_path):
    from audio_fixtures import make_audio

    music = tmp_path / "music"
    music.mkdir()
    tone = make_audio(music / "tone.flac", "flac", seconds=7.0)
    short = make_track(music, "mp3", name="short")
    (music / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(64))
    scan(library, [music])
    summary = analyze(library, device="cpu")
    assert summary.analysed == 2 and summary.status == "completed"
    for path in (tone, short):
        analyses = track_analyses(library, find_track(library, str(path))["id"])
        assert [a["model"] for a in analyses] == ["musicnn-msd", "musicnn-mtt"]
        for analysis in analyses:
            assert analysis["status"] == "ok" and len(analysis["labels"]) == 50
            assert all(0.0 <= p <= 1.0 for _label, p in analysis["labels"])
    windows = library.conn.execute("SELECT windows FROM analyses WHERE model = 'musicnn-mtt' ORDER BY track_id")
    # 1 s → one padded window; 7 s → two whole ones (the 1 s tail, under half a window, is left out)
    assert sorted(w for (w,) in windows) == [1, 2]
    for (blob,) in library.conn.execute("SELECT embedding FROM analyses"):
        vector = np.frombuffer(blob, dtype=np.float32)
        assert vector.shape == (200,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-4
    again = analyze(library, device="cpu")
    assert again.analysed == 0 and again.skipped == 2


def test_real_music_is_described_sensibly(installed_models, library, shared_corpus):
    clips = shared_corpus / "audio" / "librosa"
    orchestra = clips / "Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).hq.ogg"
    singer = clips / "Karissa_Hobbs_-_Lets_Go_Fishin.hq.ogg"
    scan(library, [orchestra, singer])
    analyze(library, device="cpu")

    def top(path, model):
        analysis = next(a for a in track_analyses(library, find_track(library, str(path))["id"]) if a["model"] == model)
        return [label for label, _p in analysis["labels"][:4]]

    assert {"classical", "strings", "violin"} & set(top(orchestra, "musicnn-mtt"))
    assert {"female", "woman", "female vocal", "vocal"} & set(top(singer, "musicnn-mtt"))


def test_analysis_without_models_says_how_to_install_them(models_dir, library, make_track, tmp_path):
    make_track(tmp_path / "music", "mp3")
    scan(library, [tmp_path / "music"])
    with pytest.raises(registry.ModelError, match="jamcaps models install"):
        analyze(library, device="cpu")


def test_analyze_cli(installed_models, make_track, tmp_path):
    music = tmp_path / "music"
    make_track(music, "ogg")
    lib = tmp_path / "lib.sqlite"
    runner = CliRunner()
    runner.invoke(cli, ["--library", str(lib), "scan", str(music)])
    result = runner.invoke(cli, ["--library", str(lib), "analyze", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["analysed"] == 1 and data["device"] == "CPUExecutionProvider"
    shown = runner.invoke(cli, ["--library", str(lib), "show", "1"]).output
    assert "musicnn-mtt" in shown and "musicnn-msd" in shown


def test_decoding_in_worker_processes_gives_the_same_results(installed_models, make_track, tmp_path):
    from jamcaps_desktop.library import Library

    music = tmp_path / "music"
    for i, fmt in enumerate(("mp3", "flac", "ogg", "m4a", "wav")):
        make_track(music, fmt, name=f"t{i}")
    results = []
    for workers in (1, 2):
        with Library(tmp_path / f"lib{workers}.sqlite") as library:
            scan(library, [music])
            summary = analyze(library, device="cpu", workers=workers)
            assert summary.analysed == 5
            results.append({path: json.loads(labels) for path, labels in library.conn.execute(
                "SELECT t.path, a.labels FROM analyses a JOIN tracks t ON t.id = a.track_id "
                "WHERE a.model = 'musicnn-mtt'")})
    assert results[0].keys() == results[1].keys()
    for path, labels in results[0].items():
        assert max(abs(labels[k] - results[1][path][k]) for k in labels) < 1e-4


def test_tempo_key_and_loudness_are_measured(installed_models, library, tmp_path):
    from audio_fixtures import cadence, drum_pattern, encode_signal

    from jamcaps_desktop.analysis.analyze import track_features

    music = tmp_path / "music"
    music.mkdir()
    beat = encode_signal(music / "beat.mp3", "mp3", drum_pattern(123.4, 30.0), 44100)
    chords = encode_signal(music / "chords.flac", "flac", cadence(10, False, 16.0), 44100)
    scan(library, [music])
    summary = analyze(library, models=[], device="cpu")
    assert summary.analysed == 2
    beat_features = track_features(library, find_track(library, str(beat))["id"])
    chord_features = track_features(library, find_track(library, str(chords))["id"])
    assert beat_features["bpm"] == pytest.approx(123.4, abs=0.3) and 0 < beat_features["bpm_confidence"] <= 1
    assert chord_features["key"] == "Bb" and 0 < chord_features["key_confidence"] <= 1
    assert -30 < beat_features["loudness_lufs"] < 0
    shown = CliRunner().invoke(cli, ["--library", str(library.path), "show", str(chords)]).output
    assert "Bb (confidence" in shown and "LUFS" in shown
    shown = CliRunner().invoke(cli, ["--library", str(library.path), "show", str(beat)]).output
    match = re.search(r"(\d+\.\d\d) BPM", shown)
    assert match and float(match.group(1)) == pytest.approx(123.4, abs=0.3)
    # without models only the measurements are made; with them, the measurements are not redone
    analyze(library, device="cpu")
    assert library.conn.execute("SELECT count(*) FROM analyses WHERE status = 'ok'").fetchone()[0] == 4


def test_worker_thread_limits_are_set_once_and_a_users_value_is_kept(monkeypatch):
    from jamcaps_desktop.jobs import workers

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    for name in workers._THREAD_VARIABLES:
        if name != "OMP_NUM_THREADS":
            monkeypatch.delenv(name, raising=False)
    writes = []
    real_setitem = type(os.environ).__setitem__

    def counting(self, key, value):
        writes.append(key)
        real_setitem(self, key, value)

    with workers.single_threaded_workers():
        assert os.environ["OMP_NUM_THREADS"] == "3"  # the user's choice
        assert all(os.environ[name] == "1" for name in workers._THREAD_VARIABLES if name != "OMP_NUM_THREADS")
        monkeypatch.setattr(type(os.environ), "__setitem__", counting)
        with workers.single_threaded_workers():  # nested, as in the measuring thread: writes nothing
            pass
        monkeypatch.setattr(type(os.environ), "__setitem__", real_setitem)
        assert not writes
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert not any(name in os.environ for name in workers._THREAD_VARIABLES if name != "OMP_NUM_THREADS")
