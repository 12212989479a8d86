"""The vector indexes beside the library and fused similarity search."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from jamcaps_desktop.library.database import utc_now
from jamcaps_desktop.scan.scanner import scan
from jamcaps_desktop.similar.index import VectorIndex, index_path
from jamcaps_desktop.similar.search import Searcher


def _unit(values) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def _set_audio(library, track_id, vector, stamp="t0"):
    with library.transaction() as conn:
        for model, part in (("model-a", vector[:4]), ("model-b", vector[4:])):
            conn.execute("INSERT OR REPLACE INTO analyses (track_id, model, model_version, audio_key, status, labels, "
                         "embedding, windows, seconds, device, analysed_at) VALUES (?, ?, '1', 'k', 'ok', '{}', ?, 1, "
                         "3.0, 'cpu', ?)", (track_id, model, _unit(part).tobytes(), stamp))


def _set_meta(library, track_id, vector, text="x"):
    with library.transaction() as conn:
        conn.execute("INSERT OR REPLACE INTO text_embeddings (track_id, model, text_hash, embedding, embedded_at) "
                     "VALUES (?, 'text', ?, ?, ?)", (track_id, hashlib.sha1(text.encode()).hexdigest(),
                                                     _unit(vector).tobytes(), utc_now()))


@pytest.fixture
def tracks(library, make_track, tmp_path):
    music = tmp_path / "music"
    for index in range(6):
        make_track(music, "mp3", name=f"t{index}")
    scan(library, [music])
    return [track_id for (track_id,) in library.conn.execute("SELECT id FROM tracks ORDER BY path")]


def test_audio_neighbours_in_order_and_index_file_kept(library, tracks):
    base = np.array([1, 0, 0, 0, 1, 0, 0, 0], dtype=np.float32)
    for step, track_id in enumerate(tracks[:5]):  # each a little further from the first
        _set_audio(library, track_id, base + step * np.array([0, 0.4, 0, 0, 0, 0.4, 0, 0]))
    matches = Searcher(library, by="audio").neighbours(tracks[0], k=3)
    assert [m.track_id for m in matches] == tracks[1:4]
    assert all(-1.0 <= m.score <= 1.0 for m in matches) and matches[0].score > matches[-1].score
    assert matches[0].meta is None and matches[0].audio == pytest.approx(matches[0].score, abs=1e-4)
    assert index_path(library, "audio").is_file()
    assert tracks[5] not in {m.track_id for m in Searcher(library, by="audio").neighbours(tracks[0], k=10)}


def test_index_follows_changes_and_survives_damage(library, tracks):
    for track_id in tracks:
        _set_audio(library, track_id, np.random.default_rng(track_id).random(8))
    index = VectorIndex(library, "audio")
    assert index.sync() == {"added": 6, "removed": 0, "size": 6}
    assert index.sync() == {"added": 0, "removed": 0, "size": 6}  # nothing changed: nothing done
    _set_audio(library, tracks[0], np.ones(8), stamp="t1")  # re-analysed
    with library.transaction() as conn:
        conn.execute("DELETE FROM tracks WHERE id = ?", (tracks[1],))
    assert index.sync() == {"added": 1, "removed": 1, "size": 5}
    index_path(library, "audio").write_bytes(b"not an index")  # damaged behind our back
    again = VectorIndex(library, "audio")
    assert again.sync()["size"] == 5
    assert again.search(_unit(np.ones(8)), 1)[0][0] == tracks[0]


def test_fused_score_and_one_sided_tracks(library, tracks):
    a, b, c = tracks[:3]
    _set_audio(library, a, [1, 0, 0, 0, 1, 0, 0, 0])
    _set_audio(library, b, [1, 0, 0, 0, 1, 0, 0, 0])  # sounds the same as a
    _set_audio(library, c, [0, 1, 0, 0, 0, 1, 0, 0])  # sounds different
    _set_meta(library, a, [1, 0, 0])
    _set_meta(library, b, [0, 1, 0])                   # described differently
    _set_meta(library, c, [1, 0, 0])                   # described the same as a
    fused = {m.track_id: m for m in Searcher(library, by="both").neighbours(a, k=5)}
    assert fused[b].score == pytest.approx(0.6) and fused[c].score == pytest.approx(0.4)
    meta_heavy = {m.track_id: m for m in Searcher(library, by="both", weights=(0.2, 0.8)).neighbours(a, k=5)}
    assert meta_heavy[c].score > meta_heavy[b].score
    d = tracks[3]
    _set_meta(library, d, [1, 0.1, 0])  # no audio analysis yet: matched on its tags alone
    only_meta = Searcher(library, by="both").neighbours(d, k=2)
    assert {m.track_id for m in only_meta} == {a, c} and only_meta[0].audio is None
