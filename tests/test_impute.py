"""Imputation: the vocabulary, the vote, the job's proposals, accepting them, and the evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_similar import _set_audio

from jamcaps_desktop.impute.evaluate import Scores, read_tsv
from jamcaps_desktop.impute.job import accept, impute, track_proposals
from jamcaps_desktop.impute.vocabulary import load_vocabulary
from jamcaps_desktop.impute.vote import Neighbour, choose, vote
from jamcaps_desktop.scan.scanner import scan
from jamcaps_desktop.write.batch import staged_changes


def test_free_form_tags_map_onto_the_vocabulary():
    vocabulary = load_vocabulary()
    assert vocabulary.canonical("genre", "Hip-Hop") == "hiphop"
    assert vocabulary.canonical("genre", "Drum & Bass") == "drumnbass"
    assert vocabulary.canonical("genre", "drum and bass") == "drumnbass"
    assert vocabulary.canonical("genre", "R&B") == "rnb"
    assert vocabulary.canonical("instruments", "Synths") == "synthesizer"
    assert vocabulary.canonical("instruments", "female vocalists") == "voice"
    assert vocabulary.canonical("mood", "Melancholy") == "melancholic"
    assert vocabulary.canonical("genre", "Polka-Techno-Fusion-Core") is None
    assert vocabulary.canonical_values("genre", ["Rock; Pop", "rock"]) == ["rock", "pop"]
    assert vocabulary.fields["genre"].name("drumnbass") == "Drum & Bass"


def test_users_extend_the_vocabulary(tmp_path, monkeypatch):
    extra = tmp_path / "vocabulary.json"
    extra.write_text(json.dumps({"fields": {"genre": {"values": {"vaporwave": "Vaporwave"},
                                                      "synonyms": {"vapor wave": "vaporwave"}}}}))
    monkeypatch.setenv("JAMCAPS_VOCABULARY", str(extra))
    vocabulary = load_vocabulary()
    assert vocabulary.canonical("genre", "Vapor Wave") == "vaporwave"
    assert vocabulary.canonical("genre", "rock") == "rock"  # the shipped values stay


def test_vote_weights_by_similarity_and_ignores_neighbours_without_the_field():
    neighbours = [Neighbour(1, 0.9, ("rock",)), Neighbour(2, 0.8, ("rock", "pop")), Neighbour(3, 0.7, ("jazz",)),
                  Neighbour(4, 0.95, ()), Neighbour(5, -0.2, ("metal",))]
    candidates = vote(neighbours)
    by_value = {c.value: c for c in candidates}
    assert candidates[0].value == "rock"
    support = 1 - np.exp(-(0.9 + 0.8 + 0.7) / 2.0)  # three voters, fairly close
    assert by_value["rock"].confidence == pytest.approx(support * (0.9 + 0.8) / (0.9 + 0.8 + 0.7), abs=1e-4)
    assert by_value["metal"].confidence == 0.0  # a dissimilar neighbour carries no weight
    assert {t for t, _s in by_value["rock"].support} == {1, 2}
    assert [c.value for c in choose(candidates, "genre", 0.35)] == ["rock"]
    lone = vote([Neighbour(9, 0.3, ("folk",))])  # one remote neighbour is no certainty
    assert lone[0].confidence < 0.2
    crowd = vote([Neighbour(i, 0.9, ("folk",)) for i in range(10)])
    assert crowd[0].confidence > 0.95
    blended = {c.value: c.confidence for c in vote(neighbours, evidence={"jazz": 0.9}, evidence_weight=0.5)}
    assert blended["jazz"] > by_value["jazz"].confidence and blended["rock"] < by_value["rock"].confidence


@given(st.lists(st.tuples(st.floats(-1, 1), st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=3)),
                max_size=12))
def test_vote_confidences_are_probabilities(raw):
    neighbours = [Neighbour(i, score, tuple(values)) for i, (score, values) in enumerate(raw)]
    candidates = vote(neighbours)
    assert all(0.0 <= c.confidence <= 1.0 for c in candidates)
    assert [c.confidence for c in candidates] == sorted((c.confidence for c in candidates), reverse=True)


def test_scores_count_hits_misses_and_top1():
    scores = Scores()
    scores.add(["rock", "pop"], ["rock"])
    scores.add([], ["jazz"])
    result = scores.summary()
    assert result["precision"] == 0.5 and result["recall"] == 0.5 and result["top1_accuracy"] == 0.5
    assert result["coverage"] == 0.5 and result["queries"] == 2


def test_reading_mtg_jamendo_metadata(tmp_path):
    tsv = tmp_path / "tracks.tsv"
    tsv.write_text("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tSPLIT0\tTAGS\n"
                   "track_1\tartist_1\talbum_1\t1.mp3\t200.0\ttrain\tgenre---rock\tgenre---punk\tinstrument---synth\t"
                   "mood/theme---happy\tgenre---nonsense\n")
    (track,) = read_tsv(tsv)
    assert track.tags == {"genre": ["rock", "punkrock"], "instruments": ["synthesizer"], "mood": ["happy"]}
    bad = tmp_path / "other.tsv"
    bad.write_text("a\tb\tc\n")
    with pytest.raises(ValueError, match="MTG-Jamendo"):
        read_tsv(bad)


def _tag(path, **fields):
    import mutagen

    audio = mutagen.File(path, easy=True)
    for name, value in fields.items():
        audio[name] = value
    audio.save()


def test_impute_proposes_what_the_neighbours_agree_on_and_accept_stages_it(library, make_track, tmp_path):
    music = tmp_path / "music"
    paths = [make_track(music, "mp3", name=f"t{i}") for i in range(5)]
    for path in paths[:3]:
        _tag(path, genre="Drum & Bass")
    _tag(paths[3], genre="Jazz")
    scan(library, [music])
    ids = {str(p): t for t, p in library.conn.execute("SELECT id, path FROM tracks")}
    near = np.array([1, 0, 0, 0, 1, 0, 0, 0], dtype=np.float32)
    for path in [*paths[:3], paths[4]]:
        _set_audio(library, ids[str(path)], near + np.random.default_rng(len(str(path))).random(8) * 0.05)
    _set_audio(library, ids[str(paths[3])], np.array([1, 1, 0, 0, 1, 1, 0, 0], dtype=np.float32))  # half as near
    summary = impute(library, fields=["genre"])
    target = ids[str(paths[4])]
    assert summary.proposals == 1 and summary.per_field == {"genre": 1}
    (proposal,) = track_proposals(library, target)
    assert proposal["values"] == ["Drum & Bass"] and proposal["confidence"] > 0.7 and proposal["method"] == "vote"
    assert {n[0] for n in proposal["neighbours"]} == {ids[str(p)] for p in paths[:3]}
    assert accept(library, [target], min_confidence=0.99) == 0  # not confident enough for this person
    assert accept(library, [target], min_confidence=0.5) == 1
    assert staged_changes(library)[target] == {"genre": ["Drum & Bass"]}
    again = impute(library, fields=["genre"])  # an accepted proposal is not proposed over again
    assert again.proposals == 0 and track_proposals(library, target)[0]["status"] == "accepted"


def test_similar_impute_accept_write_from_the_command_line(models_dir, minilm_wheel_file, make_track, tmp_path):
    import mutagen
    from click.testing import CliRunner

    from jamcaps_desktop.cli.main import cli
    from jamcaps_desktop.models import registry

    registry.install("minilm-l6", local=minilm_wheel_file)
    music = tmp_path / "music"
    quiet = [make_track(music, "mp3", name=f"quiet{i}") for i in range(4)]
    loud = [make_track(music, "mp3", name=f"loud{i}") for i in range(3)]
    for index, path in enumerate(quiet):
        _tag(path, artist="The Quiet Ones", album="Night Songs", title=f"Slow Tune {index}")
        if index:
            _tag(path, genre="Jazz")
    for index, path in enumerate(loud):
        _tag(path, artist="Riot Crew", album="Smash It", title=f"Shout {index}", genre="Punk")
    lib = str(tmp_path / "lib.sqlite")
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli, ["--library", lib, *args])
        assert result.exit_code == 0, result.output
        return result.output

    run("scan", str(music))
    neighbours = json.loads(run("similar", str(quiet[0]), "--by", "meta", "-k", "3", "--json"))
    assert {n["path"] for n in neighbours} == {str(p) for p in quiet[1:]}
    summary = json.loads(run("impute", "--fields", "genre", "--json"))
    assert summary["proposals"] == 1  # the only track without a genre
    shown = json.loads(run("show", str(quiet[0]), "--json"))
    (proposal,) = shown["proposals"]
    assert proposal["values"] == ["Jazz"] and proposal["confidence"] > 0.5
    assert "Jazz" in run("show", str(quiet[0]))
    listed = json.loads(run("ls", "--proposed", "genre", "--json"))
    assert [row["path"] for row in listed] == [str(quiet[0])]
    assert json.loads(run("ls", "--proposed", "mood", "--json")) == []
    run("accept", "proposed:genre", "--min-confidence", "0.5")  # every track with a genre proposal
    assert json.loads(run("ls", "--proposed", "any", "--json")) == []  # accepted: no longer pending
    run("write")
    assert mutagen.File(quiet[0], easy=True)["genre"] == ["Jazz"]


def test_evaluation_on_a_small_collection(tmp_path):
    import hashlib

    from jamcaps_desktop.impute.evaluate import evaluate

    class HashEncoder:  # a deterministic stand-in with another width than the real encoder's
        def encode(self, texts):
            rows = []
            for text in texts:
                vector = np.frombuffer(hashlib.sha256(text.split("|")[0].encode()).digest()[:16], dtype=np.uint8)
                vector = vector.astype(np.float32) + 1.0
                rows.append(vector / np.linalg.norm(vector))
            return np.array(rows, dtype=np.float32).reshape(len(texts), 16)

    lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tSPLIT0\tTAGS"]
    for index in range(8):  # fewer tracks than neighbours wanted, all rock, no mood at all
        split = "train" if index < 4 else "validation"
        lines.append(f"t{index}\tartist_1\talbum_{index % 2}\t{index}.mp3\t100.0\t{split}\tgenre---rock")
    tsv = tmp_path / "small.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    results = evaluate(tsv, HashEncoder(), k=10)
    genre = results["fields"]["genre"]
    assert genre["vote"]["f1_micro"] == 1.0 and genre["vote"]["coverage"] == 1.0
    assert results["fields"]["mood"]["vote"]["queries"] == 0


def test_speed_comes_from_the_tempo_with_less_confidence_near_a_boundary():
    from jamcaps_desktop.impute.derived import speed_candidates

    (slow,) = speed_candidates(72.0, 0.9)
    assert (slow.value, slow.confidence) == ("slow", 0.9)
    (fast,) = speed_candidates(160.0, 0.8)
    assert (fast.value, fast.confidence) == ("fast", 0.8)
    near = speed_candidates(123.0, 0.9)  # just under the fast boundary: medium, but not surely
    assert [c.value for c in near] == ["medium", "fast"]
    assert 0.45 <= near[0].confidence < 0.6 and near[1].confidence < near[0].confidence
    assert speed_candidates(float("nan"), 0.9) == [] and speed_candidates(0.0, 0.9) == []
    assert speed_candidates(160.0, 0.2) == []  # too unsure a tempo proposes nothing


@given(st.floats(1, 400), st.floats(0, 1))
def test_speed_confidences_are_probabilities(bpm, confidence):
    from jamcaps_desktop.impute.derived import MIN_SPEED_CONFIDENCE, speed_candidates

    candidates = speed_candidates(bpm, confidence)
    assert all(MIN_SPEED_CONFIDENCE <= c.confidence <= confidence + 1e-4 for c in candidates[:1])
    assert all(0.0 <= c.confidence <= confidence + 1e-4 for c in candidates)
    assert sum(c.confidence for c in candidates) <= confidence + 1e-3
    if confidence >= 2 * MIN_SPEED_CONFIDENCE:  # even at a boundary, half of it is enough to propose
        assert candidates


def test_genre_and_instruments_imply_vocals_and_sound():
    vocabulary = load_vocabulary()
    assert vocabulary.implied_values("vocals", {"instruments": ["voice", "piano"]}) == {"vocal": 1}
    assert vocabulary.implied_values("sound", {"genre": ["techno"], "instruments": ["synthesizer"]}) == {"electric": 2}
    # as much for acoustic as for electric: nothing is implied
    assert vocabulary.implied_values("sound", {"genre": ["folk"], "instruments": ["synthesizer"]}) == {}
    assert vocabulary.canonical("vocals", "No Vocals") == "instrumental"
    assert vocabulary.canonical("vocals", "female vocalists") == "vocal"


def test_impute_proposes_vocals_sound_and_speed_and_they_are_written(library, make_track, tmp_path):
    import mutagen
    from mutagen.easyid3 import EasyID3

    from jamcaps_desktop.library.database import utc_now
    from jamcaps_desktop.write.batch import write_changes

    EasyID3.RegisterTXXXKey("instruments", "INSTRUMENTS")
    music = tmp_path / "music"
    paths = [make_track(music, "mp3", name=f"t{i}") for i in range(5)]
    for path in paths[:3]:
        _tag(path, genre="Techno")
    _tag(paths[3], instruments="Voice", bpm="72")
    scan(library, [music])
    ids = {str(p): t for t, p in library.conn.execute("SELECT id, path FROM tracks")}
    near = np.array([1, 0, 0, 0, 1, 0, 0, 0], dtype=np.float32)
    for path in paths:
        _set_audio(library, ids[str(path)], near + np.random.default_rng(len(str(path))).random(8) * 0.05)
    target, singer = ids[str(paths[4])], ids[str(paths[3])]
    with library.transaction() as conn:  # the analysis measured 128.5 BPM, fairly sure
        conn.execute("INSERT INTO track_features (track_id, audio_key, measured_at, bpm, bpm_confidence) "
                     "VALUES (?, 'k', ?, 128.5, 0.8)", (target, utc_now()))
    impute(library, fields=["vocals", "sound", "speed"])
    proposed = {p["field"]: p for p in track_proposals(library, target)}
    assert proposed["sound"]["values"] == ["Electric"] and proposed["sound"]["method"] == "vote"
    assert {n[0] for n in proposed["sound"]["neighbours"]} == {ids[str(p)] for p in paths[:3]}
    assert proposed["speed"]["values"] == ["Fast"] and proposed["speed"]["method"] == "tempo"
    assert 0.4 < proposed["speed"]["confidence"] < 0.8  # close to the boundary: less sure than the tempo
    assert "Medium" in proposed["speed"]["candidates"]
    own = {p["field"]: p for p in track_proposals(library, singer)}
    assert own["vocals"]["values"] == ["Vocal"] and own["vocals"]["method"] == "derived"
    assert own["speed"]["values"] == ["Slow"] and own["speed"]["confidence"] == 0.95  # from its BPM tag
    # a techno track is electric by its own genre
    assert {p["field"]: p["values"] for p in track_proposals(library, ids[str(paths[0])])}["sound"] == ["Electric"]

    assert accept(library, [target], fields=["sound", "speed"]) == 2
    summary = write_changes(library, staged_changes(library))
    assert summary.count("written") == 1
    tags = mutagen.File(paths[4])
    assert str(tags["TXXX:SOUND"]) == "Electric" and str(tags["TXXX:SPEED"]) == "Fast"


def test_audioset_labels_map_onto_the_vocabulary():
    vocabulary = load_vocabulary()
    expected = {("genre", "Rock music"): "rock", ("genre", "Hip hop music"): "hiphop", ("genre", "Drum and bass"):
                "drumnbass", ("genre", "Music of Latin America"): "latin", ("mood", "Happy music"): "happy",
                ("mood", "Tender music"): "soft", ("instruments", "Violin, fiddle"): "violin",
                ("instruments", "Drum kit"): "drums", ("instruments", "Bass guitar"): "bass",
                ("vocals", "Female singing"): "vocal", ("sound", "Electronic music"): "electric"}
    for (field, label), value in expected.items():
        assert vocabulary.canonical(field, label) == value, label
    assert vocabulary.canonical("genre", "Dog") is None and vocabulary.canonical("genre", "Music") is None
