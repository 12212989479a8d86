"""Captions: grounded by construction (template) or checked (language model), stored, searched, exported."""

from __future__ import annotations

import json

import mutagen
from click.testing import CliRunner
from mutagen.easyid3 import EasyID3

from jamcaps_desktop.caption.evidence import Evidence, track_evidence
from jamcaps_desktop.caption.export import export_jsonl
from jamcaps_desktop.caption.job import caption, track_caption
from jamcaps_desktop.caption.search import query_terms, search
from jamcaps_desktop.caption.writers import llm_caption, llm_prompt, template_caption, ungrounded
from jamcaps_desktop.cli.main import cli
from jamcaps_desktop.impute.vocabulary import load_vocabulary
from jamcaps_desktop.library.database import utc_now
from jamcaps_desktop.scan.scanner import scan


def _evidence(**values):
    evidence = Evidence(bpm=values.pop("bpm", None), key=values.pop("key", None))
    for name, items in values.items():
        for item in items:
            evidence.add(name, item, "tag")
    return evidence


def test_the_template_says_what_the_evidence_says_and_nothing_else():
    vocabulary = load_vocabulary()
    evidence = _evidence(genre=["classical"], mood=["calm"], instruments=["piano", "violin"], vocals=["instrumental"],
                         bpm=72.4, key="F#m")
    text = template_caption(evidence, vocabulary)
    assert text == "A calm classical track with piano and violin, instrumental, at about 72 BPM in F♯ minor."
    assert ungrounded(text, evidence, vocabulary) == []
    assert template_caption(_evidence(bpm=120.0), vocabulary) == ""  # nothing about its sound: no caption
    assert template_caption(_evidence(genre=["rnb"]), vocabulary).startswith("An R&B track")


def test_words_the_evidence_does_not_support_are_found():
    vocabulary = load_vocabulary()
    evidence = _evidence(genre=["rock"], instruments=["electricguitar"])
    assert ungrounded("A rock song with electric guitar and a soaring guitar solo.", evidence, vocabulary) == []
    assert ungrounded("A rock song with saxophone over a jazz groove.", evidence, vocabulary) == ["saxophone", "jazz"]
    assert ungrounded("A happy rock song.", evidence, vocabulary) == ["happy"]


def test_the_language_model_caption_is_kept_only_when_grounded():
    vocabulary = load_vocabulary()
    evidence = _evidence(genre=["rock"], instruments=["drums"], bpm=140.0)
    prompts = []

    def grounded(prompt, schema, max_tokens):
        prompts.append(prompt)
        return " A driving rock track with pounding drums at 140 BPM.\nFacts: ..."

    text, how = llm_caption(grounded, evidence, vocabulary)
    assert (text, how) == ("A driving rock track with pounding drums at 140 BPM.", "llm")
    assert prompts[0].endswith('Facts: {"genre": ["Rock"], "instruments": ["Drums"], "bpm": 140}\nCaption:')

    def inventive(prompt, schema, max_tokens):
        return "A rock anthem with soaring violin and a choir."

    text, how = llm_caption(inventive, evidence, vocabulary)
    assert text == template_caption(evidence, vocabulary) and "violin" in how
    assert "Facts:" in llm_prompt(evidence, vocabulary)


def _tag(path, **fields):
    EasyID3.RegisterTXXXKey("instruments", "INSTRUMENTS")
    EasyID3.RegisterTextKey("key", "TKEY")
    audio = mutagen.File(path, easy=True)
    if audio.tags is None:
        audio.add_tags()
    for name, value in fields.items():
        audio[name] = value
    audio.save()


def _captioned_library(library, make_track, tmp_path):
    music = tmp_path / "music"
    piano = make_track(music, "mp3", name="piano")
    _tag(piano, title="Nocturne", genre="Classical", mood="Calm", instruments="Piano", key="Am")
    techno = make_track(music, "mp3", name="techno")
    _tag(techno, title="Warehouse", genre="Techno", bpm="132")
    bare = make_track(music, "mp3", name="bare")
    scan(library, [music])
    ids = {p.stem: t for t, p in ((t, __import__("pathlib").Path(p)) for t, p in
                                  library.conn.execute("SELECT id, path FROM tracks"))}
    return ids, (piano, techno, bare)


def test_captions_are_stored_searched_and_redone_when_the_facts_change(library, make_track, tmp_path):
    ids, (piano, _techno, _bare) = _captioned_library(library, make_track, tmp_path)
    summary = caption(library)
    assert summary.written == 2 and summary.without_evidence == 1
    assert track_caption(library, ids["piano"])["text"] == "A calm acoustic classical track with piano, in A minor."
    # techno implies an electric sound, 132 BPM a fast one
    assert track_caption(library, ids["techno"])["text"] == "A fast electric techno track, at about 132 BPM."
    hits = search(library, "calm piano in a minor key")
    assert hits[0].track_id == ids["piano"]
    assert search(library, "techno")[0].track_id == ids["techno"]
    assert search(library, "the and of") == []  # nothing but stop words
    assert query_terms("Calm PIANO, in a minor key!") == ["calm", "piano", "minor"]
    again = caption(library)
    assert again.written == 0 and again.unchanged == 2  # resumable: nothing changed, nothing redone
    _tag(piano, mood="Sad")
    scan(library, [piano.parent])
    third = caption(library)
    assert third.written == 1 and "sad" in track_caption(library, ids["piano"])["text"]
    assert search(library, "sad")[0].track_id == ids["piano"]  # the index follows the library


def test_evidence_includes_what_the_taggers_heard_clearly(library, make_track, tmp_path):
    ids, _paths = _captioned_library(library, make_track, tmp_path)
    with library.transaction() as conn:
        conn.execute("INSERT INTO analyses (track_id, model, model_version, audio_key, status, labels, windows, "
                     "seconds, device, analysed_at) VALUES (?, 'm', '1', 'k', 'ok', ?, 1, 3.0, 'cpu', ?)",
                     (ids["bare"], json.dumps({"guitar": 0.8, "jazz": 0.6, "flute": 0.1, "female vocal": 0.7}),
                      utc_now()))
    evidence = track_evidence(library, ids["bare"])
    assert evidence.values == {"instruments": ["guitar", "voice"], "genre": ["jazz"], "vocals": ["vocal"]} or (
        set(evidence.values) == {"instruments", "genre", "vocals"} and "flute" not in evidence.values["instruments"])
    assert evidence.sources["genre"]["jazz"] == "heard 0.60"
    text = template_caption(evidence, load_vocabulary())
    assert "jazz" in text and "guitar" in text and "flute" not in text


def test_export_and_the_command_line(library, make_track, tmp_path, monkeypatch):
    ids, _paths = _captioned_library(library, make_track, tmp_path)
    library_path = str(library.path)
    library.close()
    runner = CliRunner()
    result = runner.invoke(cli, ["--library", library_path, "caption", "--stage"])
    assert result.exit_code == 0, result.output
    assert "Captioned 2 track(s)" in result.output
    result = runner.invoke(cli, ["--library", library_path, "search", "calm", "piano", "--json"])
    assert json.loads(result.output)[0]["track_id"] == ids["piano"]
    staged = runner.invoke(cli, ["--library", library_path, "staged"])
    assert "A calm acoustic classical track with piano" in staged.output
    target = tmp_path / "dataset.jsonl"
    result = runner.invoke(cli, ["--library", library_path, "export", "--jsonl", str(target)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(records) == 3
    piano = next(r for r in records if r["id"] == ids["piano"])
    assert piano["captions"][0]["text"].startswith("A calm acoustic classical") and piano["captions"][0]["start_s"] == 0
    assert piano["metadata"]["genre"] == ["Classical"] and set(piano) >= {"path", "duration", "imputed", "analysis"}
    shown = runner.invoke(cli, ["--library", library_path, "show", str(ids["piano"])])
    assert "Caption" in shown.output and "A calm acoustic classical track with piano" in shown.output
    assert export_jsonl  # the module function the command uses
