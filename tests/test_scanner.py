from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from audio_fixtures import EXPECTED_CODEC, EXPECTED_CONTAINER, FORMATS
from tagging import tag_file

from jamcaps_desktop.jobs.base import CancelToken, Progress
from jamcaps_desktop.library import Library
from jamcaps_desktop.library.queries import canonical_tags, find_track, track_tags
from jamcaps_desktop.scan import scanner as scanner_module
from jamcaps_desktop.scan.scanner import scan


def _rows(library: Library) -> dict[str, dict]:
    cols = ("id", "path", "status", "error", "container", "codec", "duration", "sample_rate", "channels")
    rows = library.conn.execute(f"SELECT {', '.join(cols)} FROM tracks")
    return {r[1]: dict(zip(cols, r, strict=True)) for r in rows}


def test_first_scan_records_every_format(library, make_track, tmp_path):
    music = tmp_path / "music"
    for fmt in FORMATS:
        make_track(music / "sub", fmt)
    summary = scan(library, [music])
    assert summary.status == "completed"
    assert summary.added == len(FORMATS) and not summary.errors
    rows = _rows(library)
    for fmt in FORMATS:
        path = str(music / "sub" / f"{fmt}.{FORMATS[fmt][0]}")
        row = rows[path]
        assert row["status"] == "ok"
        assert row["container"] == EXPECTED_CONTAINER[fmt], fmt
        assert row["codec"] == EXPECTED_CODEC[fmt], fmt
        assert 0.9 < row["duration"] < 1.2, (fmt, row["duration"])
        assert row["sample_rate"] in (44100, 48000) and row["channels"] == 2


def test_rescan_of_unchanged_tree_only_stats(library, make_track, tmp_path, monkeypatch):
    music = tmp_path / "music"
    for fmt in ("mp3", "flac", "ogg"):
        make_track(music, fmt)
    scan(library, [music])

    def no_reading(*args, **kwargs):
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(scanner_module, "read_file", no_reading)
    summary = scan(library, [music])
    assert summary.unchanged == 3 and summary.added == summary.updated == 0


def test_changed_file_is_updated_with_its_new_tags(library, make_track, tmp_path):
    music = tmp_path / "music"
    path = make_track(music, "flac")
    scan(library, [music])
    track_id = find_track(library, str(path))["id"]
    tag_file(path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000_000))
    summary = scan(library, [music])
    assert summary.updated == 1
    row = find_track(library, str(path))
    assert row["id"] == track_id
    assert canonical_tags(track_tags(library, track_id))["genre"] == ["Rock", "Pop"]


def test_moved_and_renamed_file_keeps_its_track(library, make_track, tmp_path):
    music = tmp_path / "music"
    path = make_track(music / "a", "mp3")
    tag_file(path)
    scan(library, [music])
    old_id = find_track(library, str(path))["id"]
    target = music / "b" / "renamed – ünïcødé.mp3"
    target.parent.mkdir()
    shutil.move(path, target)
    summary = scan(library, [music])
    assert summary.moved == 1 and summary.added == 0 and summary.missing == 0
    row = find_track(library, str(target))
    assert row["id"] == old_id and row["status"] == "ok"
    assert find_track(library, str(path)) is None


def test_deleted_file_is_marked_missing_then_found_again(library, make_track, tmp_path):
    music = tmp_path / "music"
    keep = make_track(music, "mp3")
    gone = make_track(music, "flac")
    scan(library, [music])
    backup = tmp_path / "backup.flac"
    shutil.move(gone, backup)
    summary = scan(library, [music])
    assert summary.missing == 1
    row = find_track(library, str(gone))
    assert row["status"] == "missing" and row["missing_since"]
    assert find_track(library, str(keep))["status"] == "ok"
    shutil.move(backup, gone)
    summary = scan(library, [music])
    assert find_track(library, str(gone))["status"] == "ok"
    assert summary.missing == 0


def test_bad_files_get_error_rows_and_the_scan_goes_on(library, make_track, tmp_path, monkeypatch):
    music = tmp_path / "music"
    good = make_track(music, "flac", name="good")
    (music / "empty.mp3").write_bytes(b"")
    (music / "picture.mp3").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000))
    (music / "notes.flac").write_text("this is not a flac file\n" * 20)
    long_flac = tmp_path / "long.flac"
    from audio_fixtures import make_audio

    make_audio(long_flac, "flac", seconds=6.0)
    data = long_flac.read_bytes()
    (music / "truncated.flac").write_bytes(data[: len(data) // 2])
    (music / "garbage.ogg").write_bytes(b"OggS" + os.urandom(5000))
    (music / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(100))
    (music / "locked.mp3").write_bytes(make_track(tmp_path / "src", "mp3").read_bytes())

    real_open = open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith("locked.mp3"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    summary = scan(library, [music], workers=1)
    reasons = {Path(e["path"]).name: e["reason"] for e in summary.errors}
    assert reasons["empty.mp3"] == "empty file (0 bytes)"
    assert "JPEG image" in reasons["picture.mp3"]
    assert "text file" in reasons["notes.flac"]
    assert reasons["truncated.flac"].startswith("truncated")
    assert "garbage.ogg" in reasons
    assert reasons["locked.mp3"] == "permission denied"
    assert [i["path"] for i in summary.ignored] == [str(music / "cover.jpg")]
    rows = _rows(library)
    assert rows[str(good)]["status"] == "ok"
    assert {r["status"] for p, r in rows.items() if p != str(good)} == {"error"}
    assert summary.status == "completed"


def test_lying_extension_is_read_by_content(library, make_track, tmp_path):
    music = tmp_path / "music"
    mp3 = make_track(tmp_path / "src", "mp3")
    (music).mkdir()
    shutil.copyfile(mp3, music / "actually-mp3.flac")
    shutil.copyfile(mp3, music / "no_extension")
    scan(library, [music])
    rows = _rows(library)
    assert rows[str(music / "actually-mp3.flac")]["container"] == "mp3"
    assert rows[str(music / "no_extension")]["container"] == "mp3"


def test_hidden_files_symlink_loops_and_odd_names(library, make_track, tmp_path):
    music = tmp_path / "music"
    make_track(music, "mp3", name="visible")
    make_track(music / ".hidden", "mp3", name="secret")
    make_track(music, "flac", name=".dotfile")
    odd = make_track(music, "ogg", name="日本語 — ünïcødé 🎵 'quotes' \"double\"")
    os.symlink(music, music / "loop")
    raw_name = os.fsencode(str(music)) + b"/latin1-\xe9t\xe9.mp3"
    with open(raw_name, "wb") as handle:
        handle.write((music / "visible.mp3").read_bytes())
    summary = scan(library, [music])
    rows = _rows(library)
    names = sorted(Path(p).name for p in rows)
    assert names == sorted(["visible.mp3", odd.name, "latin1-\\xe9t\\xe9.mp3"])
    assert summary.status == "completed"  # the loop link points inside the folder: not followed
    # the non-UTF-8 name keeps its exact bytes and is found again unchanged
    keys = [bytes(k) for (k,) in library.conn.execute("SELECT path_key FROM tracks")]
    assert raw_name in keys
    again = scan(library, [music])
    assert again.unchanged == 3 and again.added == 0


def test_unreadable_folder_is_reported_and_its_tracks_not_marked_missing(library, make_track, tmp_path,
                                                                        monkeypatch):
    music = tmp_path / "music"
    inner = music / "locked"
    make_track(inner, "mp3")
    scan(library, [music])
    real_scandir = os.scandir

    def guarded(path="."):
        if str(path) == str(inner):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    summary = scan(library, [music])
    assert any(i["kind"] == "unreadable-folder" and i["path"] == str(inner) for i in summary.issues)
    assert summary.missing == 0
    assert {r["status"] for r in _rows(library).values()} == {"ok"}


def _tree(make_track, root: Path, count: int) -> None:
    formats = ("mp3", "flac", "ogg", "m4a")
    for i in range(count):
        make_track(root / f"album{i % 5}", formats[i % len(formats)], name=f"track{i:03d}")


def test_cancel_keeps_what_was_done_and_marks_nothing_missing(library, make_track, tmp_path):
    music = tmp_path / "music"
    _tree(make_track, music, 30)
    scan(library, [music / "album0"])
    token = CancelToken()
    seen = []

    def progress(event: Progress) -> None:
        if event.stage == "read":
            seen.append(event.done)
            if event.done == 10:
                token.cancel()

    summary = scan(library, [music], progress=progress, cancel=token, workers=1)
    assert summary.status == "cancelled"
    assert summary.missing == 0
    count = library.conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0]
    assert 10 <= count < 30
    # every stored track is whole: it has its stream facts
    assert library.conn.execute("SELECT COUNT(*) FROM tracks WHERE duration IS NULL").fetchone()[0] == 0
    status = library.conn.execute("SELECT status FROM scans WHERE id = ?", (summary.scan_id,)).fetchone()[0]
    assert status == "cancelled"
    final = scan(library, [music])
    assert final.status == "completed"
    assert library.conn.execute("SELECT COUNT(*) FROM tracks").fetchone()[0] == 30


def test_keyboard_interrupt_mid_scan_leaves_a_consistent_library(library, make_track, tmp_path):
    music = tmp_path / "music"
    _tree(make_track, music, 12)

    def progress(event: Progress) -> None:
        if event.stage == "read" and event.done == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(library, [music], progress=progress, workers=1)
    status = library.conn.execute("SELECT status FROM scans ORDER BY id DESC").fetchone()[0]
    assert status == "interrupted"
    assert library.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert library.conn.execute("PRAGMA foreign_key_check").fetchall() == []
    summary = scan(library, [music])
    assert summary.status == "completed"
    assert library.conn.execute("SELECT COUNT(*) FROM tracks WHERE status = 'ok'").fetchone()[0] == 12


def test_parallel_workers_give_the_same_library(make_track, tmp_path):
    music = tmp_path / "music"
    _tree(make_track, music, scanner_module.PARALLEL_THRESHOLD + 6)
    results = []
    for workers in (1, 2):
        with Library(tmp_path / f"lib{workers}.sqlite") as lib:
            summary = scan(lib, [music], workers=workers)
            assert summary.added == scanner_module.PARALLEL_THRESHOLD + 6
            results.append(sorted(lib.conn.execute(
                "SELECT path, container, codec, duration, fingerprint FROM tracks").fetchall()))
    assert results[0] == results[1]


def test_missing_root_is_refused(library, tmp_path):
    with pytest.raises(FileNotFoundError):
        scan(library, [tmp_path / "nope"])


def test_single_file_root(library, make_track, tmp_path):
    path = make_track(tmp_path, "wv")
    summary = scan(library, [path])
    assert summary.added == 1
    assert find_track(library, str(path))["container"] == "wavpack"


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files_are_errors_in_every_format(fmt, keep, tmp_path):
    from audio_fixtures import make_audio

    from jamcaps_desktop.scan.reader import read_file

    whole = make_audio(tmp_path / f"whole.{FORMATS[fmt][0]}", fmt, seconds=6.0)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{FORMATS[fmt][0]}"
    cut.write_bytes(data[: int(len(data) * keep)])
    for path, expect_ok in ((whole, True), (cut, False)):
        st = os.stat(path)
        record = read_file(str(path), st.st_size, st.st_mtime_ns, expect_audio=True)
        assert (record.status == "ok") is expect_ok, (fmt, keep, path.name, record.error)
        if not expect_ok:
            assert "truncated" in record.error or "damaged" in record.error, record.error


def test_a_track_whose_file_stops_being_audio_becomes_an_error(library, make_track, tmp_path):
    music = tmp_path / "music"
    source = make_track(tmp_path / "src", "mp3")
    path = music / "no_extension"
    music.mkdir()
    shutil.copyfile(source, path)
    scan(library, [music])
    assert find_track(library, str(path))["status"] == "ok"
    path.write_text("now a text file\n")
    summary = scan(library, [music])
    row = find_track(library, str(path))
    assert row["status"] == "error" and "text file" in row["error"]
    assert summary.updated == 1 and not summary.ignored


def test_one_file_one_path_whatever_the_links(library, make_track, tmp_path):
    music = tmp_path / "music"
    make_track(music, "mp3", name="a")
    make_track(music, "flac", name="b")
    outside = tmp_path / "elsewhere"
    make_track(outside, "ogg", name="c")
    os.symlink(music, tmp_path / "alias")          # another name for the same folder
    os.symlink(outside, music / "linked-outside")  # a folder outside the roots: followed
    os.symlink(music / "a.mp3", music / "a-link.mp3")  # a link to a file already there: not a second track
    first = scan(library, [tmp_path / "alias"])
    assert first.added == 3
    again = scan(library, [music])
    assert again.unchanged == 3 and again.added == 0 and again.missing == 0
    paths = sorted(Path(p).relative_to(tmp_path).as_posix() for p in _rows(library))
    assert paths == ["music/a.mp3", "music/b.flac", "music/linked-outside/c.ogg"]
    # scanning the parent reaches "elsewhere" directly: c.ogg keeps its track under its real path
    parent = scan(library, [tmp_path])
    assert parent.added == 0 and parent.missing == 0 and parent.moved == 1
    paths = sorted(Path(p).relative_to(tmp_path).as_posix() for p in _rows(library))
    assert paths == ["elsewhere/c.ogg", "music/a.mp3", "music/b.flac"]


def test_a_file_renamed_while_a_new_file_takes_its_name_keeps_its_track(library, make_track, tmp_path):
    music = tmp_path / "music"
    first = make_track(music, "mp3", name="a")
    scan(library, [music])
    original_id = find_track(library, str(first))["id"]
    shutil.move(first, music / "z.mp3")
    make_track(music, "flac", name="tmp")
    shutil.move(music / "tmp.flac", music / "a.mp3")  # different content under the old name
    summary = scan(library, [music])
    assert summary.moved == 1 and summary.added == 1
    assert find_track(library, str(music / "z.mp3"))["id"] == original_id
    assert find_track(library, str(music / "a.mp3"))["id"] != original_id


def test_a_file_moved_onto_a_missing_tracks_path_keeps_its_own_track(library, make_track, tmp_path):
    music = tmp_path / "music"
    p1 = make_track(music, "mp3", name="p1")
    p2 = make_track(music, "flac", name="p2")
    scan(library, [music])
    id1, id2 = find_track(library, str(p1))["id"], find_track(library, str(p2))["id"]
    os.unlink(p2)
    scan(library, [music])
    shutil.move(p1, music / "p2.flac")
    summary = scan(library, [music])
    assert summary.moved == 1
    assert find_track(library, str(music / "p2.flac"))["id"] == id1
    status = library.conn.execute("SELECT status FROM tracks WHERE id = ?", (id2,)).fetchone()[0]
    assert status == "missing"


def test_a_copy_on_an_unmounted_drive_is_not_taken_for_a_move(library, make_track, tmp_path):
    drive = tmp_path / "drive"
    original = make_track(drive, "mp3", name="x")
    scan(library, [drive])
    original_id = find_track(library, str(original))["id"]
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy2(original, home / "x-copy.mp3")
    os.rename(drive, tmp_path / "drive-unmounted")   # the drive's folder is gone
    summary = scan(library, [home])
    assert summary.moved == 0 and summary.added == 1
    os.rename(tmp_path / "drive-unmounted", drive)
    scan(library, [drive])
    assert find_track(library, str(original))["id"] == original_id


def test_error_rows_are_read_again_when_the_problem_is_fixed(library, make_track, tmp_path, monkeypatch):
    music = tmp_path / "music"
    make_track(music, "mp3", name="locked")
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith("locked.mp3"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    assert scan(library, [music], workers=1).errors
    monkeypatch.undo()
    summary = scan(library, [music], workers=1)
    assert not summary.errors
    assert {r["status"] for r in _rows(library).values()} == {"ok"}


def test_a_file_replaced_by_one_of_the_same_size_and_mtime_is_read_again(library, make_track, tmp_path):
    music = tmp_path / "music"
    path = make_track(music, "flac", name="a")
    scan(library, [music])
    before = find_track(library, str(path))["fingerprint"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # same size, different content
    time.sleep(0.05)  # file times have a clock tick of a few milliseconds
    st = os.stat(path)
    replacement = music / "new.tmp"
    replacement.write_bytes(bytes(data))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, path)
    summary = scan(library, [music])
    assert summary.updated == 1
    assert find_track(library, str(path))["fingerprint"] != before


def test_non_audio_files_without_an_extension_are_not_read_again(library, make_track, tmp_path, monkeypatch):
    music = tmp_path / "music"
    make_track(music, "mp3")
    (music / "README").write_text("liner notes\n")
    (music / "blob").write_bytes(os.urandom(3000))
    first = scan(library, [music])
    assert len(first.ignored) == 2

    def no_reading(*args, **kwargs):
        raise AssertionError("a file was read again")

    monkeypatch.setattr(scanner_module, "read_file", no_reading)
    again = scan(library, [music])
    assert len(again.ignored) == 2 and again.unchanged == 1


def test_the_library_inside_the_scanned_folder_is_left_alone(make_track, tmp_path):
    music = tmp_path / "music"
    make_track(music, "mp3")
    with Library(music / "library.sqlite") as lib:
        summary = scan(lib, [music])
        again = scan(lib, [music])
    assert summary.added == 1 and not summary.errors and not summary.ignored
    assert again.unchanged == 1 and not again.ignored


def test_two_jobs_cannot_run_on_one_library_at_once(library, make_track, tmp_path):
    from jamcaps_desktop.library import LibraryError

    music = tmp_path / "music"
    make_track(music, "mp3")
    other = Library(library.path)
    try:
        with other.job_lock("test"), pytest.raises(LibraryError, match="another scan or write"):
            scan(library, [music])
    finally:
        other.close()
    assert scan(library, [music]).added == 1


def test_a_crashing_reader_becomes_an_error_row(library, make_track, tmp_path, monkeypatch):
    from fake_pools import dying_pool

    import jamcaps_desktop.jobs.workers as workers_module

    music = tmp_path / "music"
    _tree(make_track, music, scanner_module.PARALLEL_THRESHOLD + 2)
    victim = sorted(music.rglob("*.flac"))[3]
    # reads run in-process; the victim's read fails the way a dead worker does
    monkeypatch.setattr(workers_module, "ProcessPoolExecutor", dying_pool(lambda found: found.path == str(victim)))
    summary = scan(library, [music], workers=2)
    assert summary.status == "completed"
    reasons = {e["path"]: e["reason"] for e in summary.errors}
    assert reasons == {str(victim): scanner_module.READER_CRASHED}
    assert summary.added == scanner_module.PARALLEL_THRESHOLD + 2
