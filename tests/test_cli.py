from __future__ import annotations

import json

from click.testing import CliRunner
from tagging import tag_file

from jamcaps_desktop.cli.main import cli


def _run(args, library):
    runner = CliRunner()
    return runner.invoke(cli, ["--library", str(library), *args], catch_exceptions=False)


def test_scan_json_and_exit_status_with_bad_files(make_track, tmp_path):
    music = tmp_path / "music"
    good = make_track(music, "flac")
    tag_file(good)
    make_track(music, "mp3")
    (music / "broken.mp3").write_bytes(b"nonsense" * 10)
    (music / "cover.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    lib = tmp_path / "lib.sqlite"
    result = _run(["scan", str(music), "--json"], lib)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["status"] == "completed"
    assert data["added"] == 3 and data["error_count"] == 1 and data["ignored_count"] == 1
    assert data["errors"][0]["path"].endswith("broken.mp3")
    assert data["library_summary"]["tracks"] == 3

    again = json.loads(_run(["scan", str(music), "--json"], lib).output)
    assert again["unchanged"] == 3 and again["added"] == 0


def test_human_scan_output_ends_with_library_summary(make_track, tmp_path):
    music = tmp_path / "music"
    make_track(music, "ogg")
    result = _run(["scan", str(music)], tmp_path / "lib.sqlite")
    assert result.exit_code == 0
    assert "Scanned 1 audio files" in result.output
    assert "1 tracks: 1 usable" in result.output


def test_ls_filters(make_track, tmp_path):
    music = tmp_path / "music"
    tagged = make_track(music, "flac")
    tag_file(tagged)
    make_track(music, "mp3")
    (music / "bad.ogg").write_bytes(b"x" * 100)
    lib = tmp_path / "lib.sqlite"
    _run(["scan", str(music)], lib)

    rows = json.loads(_run(["ls", "--json", "--missing", "genre"], lib).output)
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["mp3.mp3"]
    rows = json.loads(_run(["ls", "--json", "--format", "flac"], lib).output)
    assert [r["genre"] for r in rows] == [["Rock", "Pop"]]
    rows = json.loads(_run(["ls", "--json", "--errors"], lib).output)
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["error"]
    plain = _run(["ls"], lib).output.splitlines()
    assert plain[0].split("\t")[:3] == ["ID", "Format", "Length"] and len(plain) == 4


def test_show_and_stats(make_track, tmp_path):
    music = tmp_path / "music"
    path = make_track(music, "m4a")
    tag_file(path)
    lib = tmp_path / "lib.sqlite"
    _run(["scan", str(music)], lib)
    data = json.loads(_run(["show", str(path), "--json"], lib).output)
    assert data["container"] == "mp4" and data["codec"] == "aac"
    assert data["tags"]["mood"] == ["Happy"] and data["tags"]["key"] == ["Am"]
    text = _run(["show", str(data["id"])], lib).output
    assert "instruments" in text and "piano ; drums" in text
    stats = json.loads(_run(["stats", "--json"], lib).output)
    assert stats["ok"] == 1 and stats["field_coverage"]["genre"]["percent"] == 100.0


def test_usage_errors_exit_non_zero(tmp_path):
    lib = tmp_path / "lib.sqlite"
    assert _run(["scan", str(tmp_path / "does-not-exist")], lib).exit_code == 2
    assert _run(["ls", "--missing", "colour"], lib).exit_code == 2
    assert _run(["show", "12345"], lib).exit_code == 1


def test_library_error_exits_non_zero(tmp_path):
    bad = tmp_path / "lib.sqlite"
    bad.write_text("not a database" * 100)
    result = _run(["stats"], bad)
    assert result.exit_code == 1 and "library" in result.output


def test_environment_variable_selects_the_library(make_track, tmp_path, monkeypatch):
    music = tmp_path / "music"
    make_track(music, "wav")
    monkeypatch.setenv("JAMCAPS_LIBRARY", str(tmp_path / "env.sqlite"))
    result = CliRunner().invoke(cli, ["scan", str(music), "--json"])
    assert result.exit_code == 0
    assert (tmp_path / "env.sqlite").exists()


def test_read_commands_do_not_create_a_library(tmp_path):
    missing = tmp_path / "typo" / "lib.sqlite"
    result = _run(["stats"], missing)
    assert result.exit_code == 1 and "no library" in result.output
    assert not missing.parent.exists()


def test_piped_ls_keeps_one_line_per_track_whatever_the_names(make_track, tmp_path):
    music = tmp_path / "music"
    make_track(music, "mp3", name="two\nlines\tand tab")
    lib = tmp_path / "lib.sqlite"
    _run(["scan", str(music)], lib)
    lines = _run(["ls"], lib).output.splitlines()
    assert len(lines) == 2 and lines[1].endswith("two\\nlines\\tand tab.mp3")


def test_set_write_history_undo(make_track, tmp_path):
    music = tmp_path / "music"
    paths = [make_track(music, fmt) for fmt in ("mp3", "flac", "m4a")]
    for path in paths:
        tag_file(path)
    lib = tmp_path / "lib.sqlite"
    _run(["scan", str(music)], lib)
    originals = {p: p.read_bytes() for p in paths}

    result = _run(["set", "format:flac", "mood=calm", "mood=dark", "bpm=90.4"], lib)
    assert result.exit_code == 0 and "on 1 track(s)" in result.output
    result = _run(["set", str(music), "genre=Ambient"], lib)
    assert "on 3 track(s)" in result.output

    dry = json.loads(_run(["write", "--dry-run", "--json"], lib).output)
    assert dry["planned"] == 3
    flac = next(f for f in dry["files"] if f["path"].endswith(".flac"))
    assert flac["changes"]["mood"] == {"old": ["Happy"], "new": ["calm", "dark"]}
    assert flac["changes"]["bpm"] == {"old": ["120"], "new": ["90"]}
    assert {p: p.read_bytes() for p in paths} == originals  # a dry run writes nothing

    done = json.loads(_run(["write", "--json"], lib).output)
    assert done["written"] == 3 and done["failed"] == 0
    shown = json.loads(_run(["show", str(paths[1]), "--json"], lib).output)
    assert shown["tags"]["mood"] == ["calm", "dark"] and shown["tags"]["genre"] == ["Ambient"]
    assert json.loads(_run(["staged", "--json"], lib).output)["files"] == []

    history = json.loads(_run(["history", "--json"], lib).output)
    assert history[0]["kind"] == "write" and history[0]["written"] == 3
    details = json.loads(_run(["history", str(done["batch_id"]), "--json"], lib).output)
    assert {d["status"] for d in details} == {"written"}

    undone = json.loads(_run(["undo", "--json"], lib).output)
    assert undone["written"] == 3
    shown = json.loads(_run(["show", str(paths[1]), "--json"], lib).output)
    assert shown["tags"]["mood"] == ["Happy"] and shown["tags"]["genre"] == ["Rock", "Pop"]
    again = _run(["undo", str(done["batch_id"])], lib)
    assert again.exit_code == 1 and "nothing left to undo" in again.output


def test_set_refuses_bad_values_and_unknown_targets(make_track, tmp_path):
    music = tmp_path / "music"
    make_track(music, "mp3")
    lib = tmp_path / "lib.sqlite"
    _run(["scan", str(music)], lib)
    assert _run(["set", str(music), "bpm=fast"], lib).exit_code == 2
    assert _run(["set", str(music), "colour=red"], lib).exit_code == 2
    assert _run(["set", str(music), "genre"], lib).exit_code == 2
    result = _run(["set", "artist:nobody", "genre=Rock"], lib)
    assert result.exit_code == 1 and "no track matches" in result.output
    assert _run(["undo"], lib).exit_code == 1
