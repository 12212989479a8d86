"""Writing tags: values read back, nothing else moves, the audio is untouched, undo is exact, and no
failure at any step can damage the original file."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import stat
from collections import Counter
from pathlib import Path

import av
import mutagen
import numpy as np
import pytest
from audio_fixtures import FORMATS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jamcaps_desktop.library import Library
from jamcaps_desktop.library.queries import canonical_tags, find_track, track_tags
from jamcaps_desktop.scan.scanner import scan
from jamcaps_desktop.scan.sniff import sniff_file
from jamcaps_desktop.scan.walker import NON_AUDIO_EXTENSIONS, extension
from jamcaps_desktop.tags.edit import (
    TAG_FORMAT_BY_CONTAINER,
    TagEditError,
    apply_changes,
    open_for_edit,
    restore_backup,
    verify_changes,
)
from jamcaps_desktop.tags.read import read_tags
from jamcaps_desktop.tags.values import InvalidValueError, normalise
from jamcaps_desktop.write import atomic
from jamcaps_desktop.write import batch as batch_module
from jamcaps_desktop.write import prepare as prepare_module
from jamcaps_desktop.write.batch import WriteOptions, recover, stage, staged_changes, undo, write_changes

CHANGES = {
    "genre": ["Ambient", "Drone"],
    "mood": ["calm"],
    "bpm": ["92"],
    "key": ["F#m"],
    "comment": ["written by the test"],
    "instruments": ["piano", "strings"],
}


def decoded_audio(path: Path) -> np.ndarray | None:
    """Every decoded sample of the first audio stream, or None where FFmpeg cannot decode the file."""
    try:
        with av.open(str(path)) as container:
            chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    except (av.error.FFmpegError, IndexError, ValueError):
        return None
    return np.concatenate(chunks) if chunks else np.zeros(0)


def raw_tags(path: Path, container: str, codec: str | None) -> Counter:
    """Every raw item of the file's tag, exactly (the adapter's snapshot), for before/after comparisons."""
    with open(path, "rb") as handle:
        data = io.BytesIO(handle.read())
    return open_for_edit(data, container, codec).adapter.snapshot()


def readable(path: Path) -> dict[tuple[str | None, str], list[str]]:
    values: dict[tuple[str | None, str], list[str]] = {}
    for tag in read_tags(mutagen.File(path), str(path)).values:
        values.setdefault((tag.field, tag.raw_key), []).append(tag.value)
    return values


# -- every file of the shared corpus that can be tagged ---------------------------------------------
def _corpus_files() -> list[Path]:
    root = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "tags"
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() not in (".txt", ".log", ".json", ".jpg", ".png"):
            with open(path, "rb") as handle:
                sniffed = sniff_file(handle)
            if sniffed.container in TAG_FORMAT_BY_CONTAINER and extension(path.name) not in NON_AUDIO_EXTENSIONS:
                found.append(path)
    return found


CORPUS = _corpus_files()


@pytest.mark.parametrize("source", CORPUS or [None], ids=[str(p.relative_to(p.parents[3])) for p in CORPUS] or ["-"])
def test_write_and_undo_every_corpus_file(source, tmp_path):
    if source is None:
        pytest.skip("../shared/corpus is not present (it is not part of the project)")
    work = tmp_path / "music"
    work.mkdir()
    path = work / source.name
    shutil.copyfile(source, path)
    os.chmod(path, 0o644)
    original_bytes = path.read_bytes()
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [work])
        track = find_track(library, str(path))
        if track["status"] != "ok":
            # a file the scanner could not use: writing refuses clearly and touches nothing
            stage(library, [track["id"]], CHANGES)
            summary = write_changes(library, staged_changes(library))
            assert summary.files[0].status == "failed" and summary.files[0].error
            assert path.read_bytes() == original_bytes
            return
        container, codec = track["container"], track["codec"]
        before_raw = raw_tags(path, container, codec)
        before_readable = readable(path)
        before_audio = decoded_audio(path)

        stage(library, [track["id"]], CHANGES)
        summary = write_changes(library, staged_changes(library))
        outcome = summary.files[0]
        assert outcome.status == "written", outcome.error

        # the values read back, from the file and in the library
        after_readable = readable(path)
        found = {}
        for (field, _key), values in after_readable.items():
            if field:
                found.setdefault(field, [])
                found[field] += [v for v in values if v not in found[field]]
        for field, values in CHANGES.items():
            assert found[field] == values, field
        assert {f: canonical_tags(track_tags(library, track["id"]))[f] for f in CHANGES} == CHANGES
        # every other tag (pictures included) is exactly as it was
        untouched_before = {k: v for k, v in before_readable.items() if k[0] not in CHANGES}
        untouched_after = {k: v for k, v in after_readable.items() if k[0] not in CHANGES}
        assert untouched_after == untouched_before
        # the audio is the same, sample for sample
        if before_audio is not None:
            after_audio = decoded_audio(path)
            assert after_audio is not None and np.array_equal(before_audio, after_audio)

        undone = undo(library)
        assert [f.status for f in undone.files] == ["written"], undone.files[0].error
        assert raw_tags(path, container, codec) == before_raw
        assert readable(path) == before_readable


# -- generated files: property tests ----------------------------------------------------------------
values_strategy = st.lists(
    st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters=";"), min_size=1, max_size=200)
    .map(str.strip).filter(bool),
    min_size=1, max_size=12, unique=True)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(genres=values_strategy, comment=st.text(min_size=1, max_size=5000).map(str.strip).filter(bool),
       instruments=values_strategy)
def test_random_unicode_long_and_many_values_round_trip(fmt, audio_templates, genres, comment, instruments):
    container = {"mp3": "mp3", "flac": "flac", "ogg": "ogg", "opus": "ogg", "m4a": "mp4", "alac": "mp4",
                 "wav": "wav", "aiff": "aiff", "wma": "asf", "wv": "wavpack"}[fmt]
    codec = {"ogg": "vorbis", "opus": "opus"}.get(fmt)
    try:
        changes = {name: normalise(name, vals) for name, vals in
                   {"genre": genres, "comment": [comment], "instruments": instruments}.items()}
    except InvalidValueError:
        assume(False)
    assume(all(changes.values()))
    original = audio_templates[fmt].read_bytes()
    data = io.BytesIO(original)
    result = apply_changes(data, container, codec, changes)
    verify_changes(data, container, codec, result, changes)
    restore_backup(data, container, codec, result.backup)
    data.seek(0)
    restored = open_for_edit(data, container, codec).adapter.snapshot()
    assert restored == open_for_edit(io.BytesIO(original), container, codec).adapter.snapshot()


# -- the safety of each step ------------------------------------------------------------------------
@pytest.fixture
def tagged_library(tmp_path, make_track):
    music = tmp_path / "music"
    paths = [make_track(music, fmt) for fmt in ("mp3", "flac", "m4a")]
    library = Library(tmp_path / "lib.sqlite")
    scan(library, [music])
    ids = [find_track(library, str(p))["id"] for p in paths]
    stage(library, ids, CHANGES)
    yield library, paths, ids
    library.close()


def _snapshot_files(paths: list[Path]) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(atomic.TEMP_PREFIX)]


@pytest.fixture(params=["in-memory", "on-disk"])
def edit_where(request, monkeypatch):
    """Small files are edited in memory and written once; large ones are copied and edited on disk."""
    if request.param == "on-disk":
        monkeypatch.setattr(atomic, "IN_MEMORY_LIMIT", 0)
    return request.param


_STEPS = {"in-memory": ["read_original", "edit_buffer", "write_copy", "fsync_file", "check_flushed",
                        "replace_file", "verify", "save"],
          "on-disk": ["copy_file", "fsync_file", "check_flushed", "replace_file", "verify", "save"]}


@pytest.mark.parametrize(("where", "step"), [(where, step) for where, steps in _STEPS.items() for step in steps])
def test_a_failure_at_any_step_leaves_every_original_intact(tagged_library, monkeypatch, where, step):
    if where == "on-disk":
        monkeypatch.setattr(atomic, "IN_MEMORY_LIMIT", 0)
    # copies are flushed one by one, or by one sync of their file system where it allows that
    if step == "fsync_file":
        monkeypatch.setattr(atomic, "can_sync_file_system", lambda device: False)
    elif step == "check_flushed":  # a sync of the whole file system, then each copy checked
        if atomic._syncfs is None or atomic._sync_file_range is None:
            pytest.skip("this platform has no syncfs")
        monkeypatch.setattr(atomic, "can_sync_file_system", lambda device: True)
    library, paths, _ids = tagged_library
    before = _snapshot_files(paths)

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "injected failure")

    if step == "verify":
        def wrong(*args, **kwargs):
            raise TagEditError("genre reads back as ['x'], not ['Ambient']")
        monkeypatch.setattr(prepare_module, "verify_changes", wrong)
    elif step == "save":
        monkeypatch.setattr("jamcaps_desktop.tags.edit.EditSession.save", fail)
    else:
        monkeypatch.setattr(atomic, step, fail)
    summary = write_changes(library, staged_changes(library))
    assert [f.status for f in summary.files] == ["failed"] * 3
    assert all(f.error for f in summary.files)
    assert _snapshot_files(paths) == before
    assert _no_temp_files(paths[0].parent)
    # nothing was written, so the staged values are still there to try again
    assert len(staged_changes(library)) == 3


def test_a_full_disk_is_a_clear_error(tagged_library, monkeypatch, edit_where):
    library, paths, _ids = tagged_library
    before = _snapshot_files(paths)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    in_memory = edit_where == "in-memory"
    step, action = ("write_copy", "writing the copy") if in_memory else ("copy_file", "copying the file")
    monkeypatch.setattr(atomic, step, disk_full)
    summary = write_changes(library, staged_changes(library))
    assert {f.error for f in summary.files} == {f"the disk is full ({action})"}
    assert _snapshot_files(paths) == before
    assert _no_temp_files(paths[0].parent)


def test_a_copy_cut_short_by_a_full_disk_is_removed(tagged_library, monkeypatch):
    """The copy is created, then the disk fills up halfway through writing it."""
    library, paths, _ids = tagged_library
    before = _snapshot_files(paths)
    real_write_copy = atomic.write_copy

    def half_then_full(temp, data, flush):
        real_write_copy(temp, data[:len(data) // 2], flush)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_copy", half_then_full)
    summary = write_changes(library, staged_changes(library))
    assert {f.error for f in summary.files} == {"the disk is full (writing the copy)"}
    assert _snapshot_files(paths) == before
    assert _no_temp_files(paths[0].parent)


class FaultyFile:
    """A file object that fails on its N-th operation, the way mutagen's own tests inject faults."""

    def __init__(self, handle, fail_at: int) -> None:
        self._handle = handle
        self._left = fail_at

    def _tick(self) -> None:
        self._left -= 1
        if self._left < 0:
            raise OSError(errno.EIO, "injected I/O error")

    def read(self, *args):
        self._tick()
        return self._handle.read(*args)

    def write(self, *args):
        self._tick()
        return self._handle.write(*args)

    def seek(self, *args):
        self._tick()
        return self._handle.seek(*args)

    def truncate(self, *args):
        self._tick()
        return self._handle.truncate(*args)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        return False


@pytest.mark.parametrize("where", ["in-memory", "on-disk"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fail_at=st.integers(min_value=0, max_value=400))
def test_io_faults_inside_the_tag_save_never_touch_the_original(make_track, tmp_path_factory, where, fail_at):
    folder = tmp_path_factory.mktemp("faults")
    path = make_track(folder / "music", "flac")
    original = path.read_bytes()
    real_open, real_buffer = open, atomic.edit_buffer

    def faulty_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith(atomic.TEMP_SUFFIX) and "+" in mode:
            return FaultyFile(handle, fail_at)
        return handle

    with Library(folder / "lib.sqlite") as library:
        scan(library, [folder / "music"])
        track_id = find_track(library, str(path))["id"]
        saved = atomic.IN_MEMORY_LIMIT
        if where == "on-disk":
            atomic.open = faulty_open  # type: ignore[attr-defined]
            atomic.IN_MEMORY_LIMIT = 0
        else:
            atomic.edit_buffer = lambda data: FaultyFile(real_buffer(data), fail_at)
        try:
            summary = write_changes(library, {track_id: CHANGES})
        finally:
            if where == "on-disk":
                del atomic.open  # type: ignore[attr-defined]
            atomic.IN_MEMORY_LIMIT = saved
            atomic.edit_buffer = real_buffer
        outcome = summary.files[0]
        if outcome.status == "written":
            # the fault came after the last operation: the new file must be complete and correct
            assert canonical_tags(track_tags(library, track_id))["genre"] == CHANGES["genre"]
        else:
            assert outcome.error
            assert path.read_bytes() == original
    assert _no_temp_files(path.parent)


def test_a_crash_before_the_replace_is_settled_as_not_written(tagged_library, monkeypatch):
    library, paths, _ids = tagged_library
    before = _snapshot_files(paths)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "replace_file", crash)
    with pytest.raises(KeyboardInterrupt):
        write_changes(library, staged_changes(library))
    pending = library.conn.execute("SELECT COUNT(*) FROM write_files WHERE status = 'pending'").fetchone()[0]
    assert pending >= 1  # the files in flight when the process died
    monkeypatch.undo()
    assert recover(library) == pending
    assert {s for (s,) in library.conn.execute("SELECT status FROM write_files")} == {"failed"}
    assert _snapshot_files(paths) == before
    assert _no_temp_files(paths[0].parent)


def test_a_crash_after_the_replace_is_settled_as_written(tagged_library, monkeypatch):
    library, _paths, _ids = tagged_library

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_module, "_settle", crash)
    with pytest.raises(KeyboardInterrupt):
        write_changes(library, staged_changes(library))
    monkeypatch.undo()
    pending = recover(library)
    assert pending >= 1
    rows = library.conn.execute("SELECT status, track_id FROM write_files").fetchall()
    assert len(rows) == pending and {status for status, _ in rows} == {"written"}
    for _status, track_id in rows:
        assert canonical_tags(track_tags(library, track_id))["mood"] == ["calm"]
    batch_status = library.conn.execute("SELECT status FROM write_batches").fetchone()[0]
    assert batch_status == "interrupted"
    # and the recovered writes can be undone
    assert {f.status for f in undo(library).files} == {"written"}


def test_read_only_files_and_files_changed_since_the_scan_are_refused(tagged_library):
    library, paths, _ids = tagged_library
    before = _snapshot_files(paths)
    os.chmod(paths[0], 0o444)
    with open(paths[1], "ab") as handle:
        handle.write(b"\x00")  # changed behind the library's back
    before[paths[1]] = paths[1].read_bytes()
    summary = write_changes(library, staged_changes(library))
    errors = {Path(f.path).name: f.error for f in summary.files if f.status == "failed"}
    assert errors[paths[0].name] == "the file is read-only"
    assert "changed on disk since it was scanned" in errors[paths[1].name]
    assert [f.status for f in summary.files].count("written") == 1
    assert paths[0].read_bytes() == before[paths[0]] and paths[1].read_bytes() == before[paths[1]]


def test_permissions_kept_and_mtime_kept_when_asked(tagged_library):
    library, paths, _ids = tagged_library
    os.chmod(paths[0], 0o640)
    os.utime(paths[1], ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    scan(library, [paths[0].parent])
    mtime = os.stat(paths[1]).st_mtime_ns
    write_changes(library, staged_changes(library), options=WriteOptions(keep_mtime=True))
    assert stat.S_IMODE(os.stat(paths[0]).st_mode) == 0o640
    assert os.stat(paths[1]).st_mtime_ns == mtime


def test_undo_refuses_a_file_whose_written_fields_changed_since(tagged_library):
    library, paths, _ids = tagged_library
    summary = write_changes(library, staged_changes(library))
    assert summary.count("written") == 3
    audio = mutagen.File(paths[1])
    audio.tags["GENRE"] = "changed by another program"   # a field this write set
    audio.save()
    edited = paths[1].read_bytes()
    other = mutagen.File(paths[2])
    other["©nam"] = ["retitled by another program"]      # a field this write did not set
    other.save()
    undone = undo(library, summary.batch_id)
    outcomes = {Path(f.path).name: f for f in undone.files}
    assert outcomes[paths[1].name].status == "failed"
    assert "genre was changed after this write" in outcomes[paths[1].name].error
    assert paths[1].read_bytes() == edited
    assert outcomes[paths[0].name].status == "written" and outcomes[paths[2].name].status == "written"
    assert mutagen.File(paths[2])["©nam"] == ["retitled by another program"]  # kept


def test_undo_steps_back_through_writes(tagged_library):
    library, _paths, ids = tagged_library
    first = write_changes(library, staged_changes(library))
    stage(library, ids, {"genre": ["Second"]})
    second = write_changes(library, staged_changes(library))
    assert second.count("written") == 3
    assert undo(library).batch_id and undo(library).count("written") == 3  # the second, then the first
    for track_id in ids:
        assert "Ambient" not in canonical_tags(track_tags(library, track_id)).get("genre", [])
    assert [b["kind"] for b in batch_module.history(library)][:2] == ["undo", "undo"]
    assert first.batch_id != second.batch_id


def test_id3v23_files_stay_v23_and_keep_mood_the_picard_way(tmp_path, make_track):
    from mutagen.id3 import ID3, TSOP

    music = tmp_path / "music"
    path = make_track(music, "mp3")
    tags = ID3()
    tags.add(TSOP(encoding=1, text=["Artist, The"]))  # a v2.4 frame Picard keeps in v2.3
    tags.save(path, v2_version=3)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        track_id = find_track(library, str(path))["id"]
        summary = write_changes(library, {track_id: {"mood": ["calm", "warm"], "genre": ["A", "B"]}})
        assert summary.files[0].status == "written", summary.files[0].error
    saved = ID3(path)
    assert saved.version[:2] == (2, 3)
    assert saved["TXXX:mood"].text == ["calm; warm"] or saved["TXXX:mood"].text == ["calm", "warm"]
    assert "TSOP" in saved
    assert canonical_tags([{"field": t.field, "raw_key": t.raw_key, "value": t.value}
                           for t in read_tags(mutagen.File(path)).values])["mood"] == ["calm", "warm"]


def test_id3v23_chosen_for_a_new_tag(tmp_path, make_track):
    from mutagen.id3 import ID3

    music = tmp_path / "music"
    path = make_track(music, "mp3")
    ID3(path).delete()
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        track_id = find_track(library, str(path))["id"]
        summary = write_changes(library, {track_id: {"mood": ["calm"]}}, options=WriteOptions(id3_version=3))
        assert summary.files[0].status == "written", summary.files[0].error
    assert ID3(path).version[:2] == (2, 3)
    assert "TXXX:mood" in ID3(path)


def test_a_field_the_format_cannot_hold_is_a_clear_error(tmp_path, make_track):
    music = tmp_path / "music"
    path = make_track(music, "wma")
    original = path.read_bytes()
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        track_id = find_track(library, str(path))["id"]
        summary = write_changes(library, {track_id: {"totaltracks": ["12"]}})
    assert summary.files[0].status == "failed"
    assert "ASF tags have no place for total tracks" in summary.files[0].error
    assert path.read_bytes() == original


def test_track_number_keeps_its_total(tmp_path, make_track):
    from tagging import tag_file

    music = tmp_path / "music"
    paths = [make_track(music, fmt) for fmt in ("mp3", "m4a", "wv", "flac")]
    for path in paths:
        tag_file(path)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        ids = [find_track(library, str(p))["id"] for p in paths]
        summary = write_changes(library, {tid: {"tracknumber": ["7"]} for tid in ids})
        assert [f.status for f in summary.files] == ["written"] * 4, [f.error for f in summary.files]
        for tid in ids:
            tags = canonical_tags(track_tags(library, tid))
            assert tags["tracknumber"] == ["7"] and tags["totaltracks"] == ["12"]


def test_values_are_checked_before_they_are_staged():
    assert normalise("bpm", ["127.6"]) == ["128"]
    assert normalise("genre", [" Rock ", "Rock", ""]) == ["Rock"]
    assert normalise("mood", []) == []
    for field, value in (("genre", "17"), ("genre", "(17)Rock"), ("genre", "a;b"), ("bpm", "fast"),
                         ("tracknumber", "0"), ("date", "yesterday"), ("musicbrainz_recordingid", "x"),
                         ("colour", "red")):
        with pytest.raises(InvalidValueError):
            normalise(field, [value])
    with pytest.raises(InvalidValueError):
        normalise("title", ["one", "two"])


def test_a_large_batch_prepared_in_worker_processes(tmp_path, make_track):
    music = tmp_path / "music"
    count = batch_module.PARALLEL_WRITE_THRESHOLD + 8
    paths = [make_track(music / f"album{i % 3}", ("mp3", "flac", "m4a")[i % 3], name=f"t{i:02d}") for i in range(count)]
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        ids = [find_track(library, str(p))["id"] for p in paths]
        stage(library, ids, CHANGES)
        summary = write_changes(library, staged_changes(library), workers=2)
        assert summary.count("written") == count, [f.error for f in summary.files if f.error][:3]
        for track_id in ids:
            assert canonical_tags(track_tags(library, track_id))["instruments"] == ["piano", "strings"]
        undone = undo(library, workers=2)
        assert undone.count("written") == count
    assert all(_no_temp_files(folder) for folder in music.iterdir())


def test_private_frames_pictures_replaygain_chapters_and_lyrics_survive(tmp_path, make_track):
    from mutagen.flac import FLAC, Picture
    from mutagen.id3 import APIC, CHAP, CTOC, GEOB, ID3, PRIV, RVA2, TIT2, TXXX, USLT, CTOCFlags

    music = tmp_path / "music"
    mp3 = make_track(music, "mp3")
    tags = ID3()
    tags.add(APIC(encoding=3, mime="image/png", type=3, desc="front", data=b"\x89PNG" + os.urandom(3000)))
    tags.add(APIC(encoding=3, mime="image/jpeg", type=4, desc="back", data=b"\xff\xd8\xff" + os.urandom(2000)))
    tags.add(PRIV(owner="www.serato.com", data=os.urandom(200)))
    tags.add(GEOB(encoding=0, mime="application/octet-stream", filename="", desc="Serato Markers_",
                  data=os.urandom(300)))
    tags.add(RVA2(desc="track", channel=1, gain=-6.5, peak=0.9))
    tags.add(TXXX(encoding=3, desc="REPLAYGAIN_TRACK_GAIN", text=["-6.50 dB"]))
    tags.add(USLT(encoding=3, lang="eng", desc="", text="la la la"))
    tags.add(CTOC(element_id="toc", flags=CTOCFlags.TOP_LEVEL | CTOCFlags.ORDERED, child_element_ids=["ch0"],
                  sub_frames=[TIT2(text=["Chapters"])]))
    tags.add(CHAP(element_id="ch0", start_time=0, end_time=500, sub_frames=[TIT2(text=["Intro"])]))
    tags.save(mp3)
    flac_path = make_track(music, "flac")
    flac = FLAC(flac_path)
    picture = Picture()
    picture.type, picture.mime, picture.data = 3, "image/jpeg", b"\xff\xd8\xff" + os.urandom(4000)
    flac.add_picture(picture)
    flac["REPLAYGAIN_TRACK_GAIN"] = "-3.10 dB"
    flac["LYRICS"] = "la la la"
    flac.save()

    before = {p: raw_tags(p, c, k) for p, c, k in ((mp3, "mp3", "mp3"), (flac_path, "flac", "flac"))}
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        ids = [find_track(library, str(p))["id"] for p in (mp3, flac_path)]
        stage(library, ids, CHANGES)
        summary = write_changes(library, staged_changes(library))
        assert summary.count("written") == 2, [f.error for f in summary.files]
    for path, container, codec in ((mp3, "mp3", "mp3"), (flac_path, "flac", "flac")):
        after = raw_tags(path, container, codec)
        kept = Counter({item: n for item, n in before[path].items()
                        if item[0] not in ("TCON", "TMOO", "TBPM", "TKEY", "COMM::eng", "TXXX:INSTRUMENTS",
                                           "GENRE", "MOOD", "BPM", "KEY", "COMMENT", "INSTRUMENTS")})
        assert kept and not (kept - after), f"lost: {sorted(kept - after)}"


def test_a_full_disk_while_saving_the_tags_is_named_plainly(tagged_library, monkeypatch):
    """A large file's copy is edited on disk, where the save itself can meet a full disk."""
    monkeypatch.setattr(atomic, "IN_MEMORY_LIMIT", 0)
    library, paths, _ids = tagged_library
    before = _snapshot_files(paths)
    real_open = open

    class Full(FaultyFile):
        def write(self, *args):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Full(handle, 10**9) if str(file).endswith(atomic.TEMP_SUFFIX) and "+" in mode else handle

    monkeypatch.setattr(atomic, "open", full_open, raising=False)
    summary = write_changes(library, staged_changes(library))
    assert {f.error for f in summary.files} == {"the disk is full (writing the tags)"}
    assert _snapshot_files(paths) == before


@pytest.mark.parametrize("start", ["3/12", "3"])
@pytest.mark.parametrize("change", [{"totaltracks": ["9"]}, {"totaltracks": []}, {"tracknumber": []},
                                    {"tracknumber": ["5"]}])
def test_vorbis_track_number_and_total_edit_as_a_pair(tmp_path, make_track, start, change):
    from mutagen.flac import FLAC

    music = tmp_path / "music"
    path = make_track(music, "flac")
    flac = FLAC(path)
    flac["TRACKNUMBER"] = start
    flac.save()
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        track_id = find_track(library, str(path))["id"]
        before = canonical_tags(track_tags(library, track_id))
        summary = write_changes(library, {track_id: change})
        assert summary.files[0].status in ("written", "unchanged"), summary.files[0].error
        after = canonical_tags(track_tags(library, track_id))
    expected = {k: v for k, v in {**before, **change}.items() if v}
    assert {k: after.get(k) for k in ("tracknumber", "totaltracks") if k in expected or k in after} == \
        {k: expected.get(k) for k in ("tracknumber", "totaltracks") if k in expected or k in after}


def _id3_case(tmp_path, make_track, build):
    music = tmp_path / "music"
    path = make_track(music, "mp3")
    build(path)
    library = Library(tmp_path / "lib.sqlite")
    scan(library, [music])
    return library, path, find_track(library, str(path))["id"]


def test_v23_only_frames_and_the_id3v1_tag_survive(tmp_path, make_track):
    from mutagen.id3 import ID3, RVAD, TIT2, TRDA

    def build(path):
        tags = ID3()
        tags.add(TIT2(encoding=1, text=["v2 title"]))
        tags.add(RVAD(adjustments=[1000, -1000], peaks=[30000, 30000]))
        tags.add(TRDA(encoding=0, text=["May 17"]))
        tags.save(path, v2_version=3, v1=0)
        with open(path, "ab") as handle:  # an ID3v1 tag with different content
            handle.write(b"TAG" + b"v1 title".ljust(30, b"\0") + b"v1 artist".ljust(30, b"\0")
                         + b"v1 album".ljust(30, b"\0") + b"1999" + b"v1 comment".ljust(28, b"\0") + b"\0\x05\x11")

    library, path, track_id = _id3_case(tmp_path, make_track, build)
    v1_before = path.read_bytes()[-128:]
    try:
        summary = write_changes(library, {track_id: {"genre": ["House"]}})
        assert summary.files[0].status == "written", summary.files[0].error
        raw = ID3(path, translate=False, load_v1=False)
        assert raw.version[:2] == (2, 3)
        assert "RVAD" in raw and "TRDA" in raw and raw["TIT2"].text == ["v2 title"]
        assert "TALB" not in raw  # nothing moved over from the v1 tag
        assert path.read_bytes()[-128:] == v1_before
        assert undo(library).files[0].status == "written"
        assert "RVAD" in ID3(path, translate=False, load_v1=False) and path.read_bytes()[-128:] == v1_before
    finally:
        library.close()


def test_changing_the_id3_version_converts_or_refuses_and_undo_restores_it(tmp_path, make_track):
    from mutagen.id3 import ID3, TDOR, TIT2, TMOO, TPUB

    def build(path):
        tags = ID3()
        tags.add(TIT2(encoding=3, text=["Ünïcödé title"]))
        tags.add(TPUB(encoding=3, text=["Label"]))
        tags.add(TMOO(encoding=3, text=["calm"]))
        tags.add(TDOR(encoding=3, text=["1999-05-17"]))
        tags.save(path, v2_version=4)

    library, path, track_id = _id3_case(tmp_path, make_track, build)
    try:
        summary = write_changes(library, {track_id: {"genre": ["House"]}}, options=WriteOptions(id3_version=3))
        assert summary.files[0].status == "written", summary.files[0].error
        converted = ID3(path)
        assert converted.version[:2] == (2, 3)
        assert "TXXX:mood" in converted and converted["TIT2"].text == ["Ünïcödé title"]
        assert undo(library).files[0].status == "written"
        restored = ID3(path)
        assert restored.version[:2] == (2, 4)
        assert restored["TDOR"].text[0].text == "1999-05-17" and "TMOO" in restored
    finally:
        library.close()


def test_undo_removes_a_tag_the_write_created(tmp_path, make_track):
    from mutagen.id3 import ID3, ID3NoHeaderError

    def build(path):
        ID3(path).delete()

    library, path, track_id = _id3_case(tmp_path, make_track, build)
    original = path.read_bytes()
    try:
        assert write_changes(library, {track_id: {"mood": ["calm"]}}).files[0].status == "written"
        assert undo(library).files[0].status == "written"
    finally:
        library.close()
    with pytest.raises(ID3NoHeaderError):
        ID3(path)
    assert path.read_bytes() == original


def test_symlinked_files_are_written_through(tmp_path, make_track):
    real = make_track(tmp_path / "real", "flac")
    music = tmp_path / "music"
    music.mkdir()
    link = music / "link.flac"
    os.symlink(real, link)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        track_id = find_track(library, str(link))
        track_id = track_id["id"] if track_id else find_track(library, str(real))["id"]
        assert write_changes(library, {track_id: {"mood": ["calm"]}}).files[0].status == "written"
    assert link.is_symlink()
    assert mutagen.File(real)["MOOD"] == ["calm"]


def test_hard_linked_files_are_refused(tagged_library):
    library, paths, _ids = tagged_library
    os.link(paths[0], paths[0].parent / "second-name.mp3")
    summary = write_changes(library, staged_changes(library))
    failed = [f for f in summary.files if f.status == "failed"]
    assert len(failed) == 1 and "hard links" in failed[0].error


def test_one_file_system_sync_flushes_a_whole_group(tagged_library, monkeypatch):
    """Where the file system syncs whole, a batch costs two syncs (the copies, then the renames), no per-file flush."""
    if atomic._syncfs is None or atomic._sync_file_range is None:
        pytest.skip("this platform has no syncfs")
    library, _paths, ids = tagged_library
    calls = {"sync": 0, "fsync": 0}
    real_sync, real_fsync = atomic.sync_file_system, atomic.fsync_file

    def sync(folder):
        calls["sync"] += 1
        real_sync(folder)

    def fsync(handle):
        calls["fsync"] += 1
        real_fsync(handle)

    monkeypatch.setattr(atomic, "can_sync_file_system", lambda device: True)
    monkeypatch.setattr(atomic, "sync_file_system", sync)
    monkeypatch.setattr(atomic, "fsync_file", fsync)
    summary = write_changes(library, staged_changes(library))
    assert summary.count("written") == 3
    assert calls == {"sync": 2, "fsync": 0}
    assert canonical_tags(track_tags(library, ids[0]))["genre"] == CHANGES["genre"]


def test_a_failed_sync_falls_back_to_flushing_each_copy(tmp_path, monkeypatch):
    """A file-system sync that fails says nothing of which copy failed: each copy it covered is flushed on
    its own (the one that fails is failed), and so is every later copy on that file system."""
    from jamcaps_desktop.write.batch import _Devices, _Flusher

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "copy.tmp").write_bytes(b"x")
    temps = [str(tmp_path / name / "copy.tmp") for name in ("a", "b", "c")]
    real_flush = atomic.flush_path

    def broken(folder):
        raise OSError(errno.EIO, "Input/output error")

    def flush(path):
        if path == temps[1]:
            raise atomic.WriteError("flushing the copy to disk failed: Input/output error")
        real_flush(path)

    monkeypatch.setattr(atomic, "can_sync_file_system", lambda device: True)
    monkeypatch.setattr(atomic, "sync_file_system", broken)
    monkeypatch.setattr(atomic, "flush_path", flush)
    flusher = _Flusher(_Devices())
    flusher.start(temps[:2])
    flusher.sync(temps[:1])  # one sync of the shared file system covers both, and fails
    flusher.wait(temps[0])
    with pytest.raises(atomic.WriteError, match="Input/output error"):
        flusher.wait(temps[1])
    flusher.start(temps[2:])  # later copies on that file system: flushed one by one
    assert temps[2] in flusher._pending
    flusher.wait(temps[2])
    flusher.close()


def test_a_copy_whose_data_failed_after_a_good_sync_is_not_put_in_place(tagged_library, monkeypatch):
    """The kernel may report a sync's write error to another program: each copy is checked on its own."""
    library, paths, _ids = tagged_library
    before = _snapshot_files(paths)
    real_check = atomic.check_flushed

    def check(path):
        with open(path, "rb") as handle:
            if handle.read(4) == b"fLaC":
                raise OSError(errno.EIO, "Input/output error")
        real_check(path)

    if atomic._syncfs is None or atomic._sync_file_range is None:
        pytest.skip("this platform has no syncfs")
    monkeypatch.setattr(atomic, "can_sync_file_system", lambda device: True)
    monkeypatch.setattr(atomic, "check_flushed", check)
    summary = write_changes(library, staged_changes(library))
    outcome = {Path(f.path).suffix: (f.status, f.error) for f in summary.files}
    assert outcome[".flac"] == ("failed", "flushing the copy to disk failed: Input/output error")
    assert outcome[".mp3"][0] == outcome[".m4a"][0] == "written"
    flac = next(p for p in paths if p.suffix == ".flac")
    assert flac.read_bytes() == before[flac]
    assert _no_temp_files(paths[0].parent)


def test_an_undone_accepted_proposal_is_up_for_review_again(tmp_path, make_track):
    """Accept a proposal, write it, undo the write: the file is back as it was, and so is the proposal."""
    from jamcaps_desktop.impute.job import accept

    music = tmp_path / "music"
    path = make_track(music, "flac")
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        track_id = find_track(library, str(path))["id"]
        with library.transaction() as conn:
            for name, values in (("genre", ["Ambient"]), ("mood", ["calm"])):
                conn.execute("INSERT INTO proposals (track_id, field, vals, confidence, method, candidates, "
                             "neighbours, models, status, created_at) VALUES (?, ?, ?, 0.9, 'vote', '{}', '[]', "
                             "'{}', 'proposed', 'now')", (track_id, name, json.dumps(values)))
        assert accept(library, [track_id]) == 2
        assert write_changes(library, staged_changes(library)).count("written") == 1
        # the mood is accepted and staged again (another value) before the first write is undone
        stage(library, [track_id], {"mood": ["dark"]})
        assert undo(library).count("written") == 1
        statuses = dict(library.conn.execute("SELECT field, status FROM proposals WHERE track_id = ?", (track_id,)))
        assert "genre" not in canonical_tags(track_tags(library, track_id))
    assert statuses == {"genre": "proposed", "mood": "accepted"}


def test_a_worker_dying_mid_batch_loses_nothing_and_leaves_no_copies(tmp_path, make_track, monkeypatch):
    """A worker killed partway through its files: the batch carries on without it, every file is written,
    and the copies it had made are not left beside the music."""
    import write_faults

    music = tmp_path / "music"
    music.mkdir()
    template = make_track(tmp_path / "template", "mp3")
    count = batch_module.PARALLEL_WRITE_THRESHOLD + 16
    for index in range(count):
        shutil.copyfile(template, music / f"{index:02d}{' kill' if index == 5 else ''}.mp3")
    monkeypatch.setattr(batch_module, "prepare_chunk", write_faults.dying_prepare_chunk)
    with Library(tmp_path / "lib.sqlite") as library:
        scan(library, [music])
        ids = [row[0] for row in library.conn.execute("SELECT id FROM tracks")]
        summary = write_changes(library, {track_id: {"genre": ["Ambient"]} for track_id in ids}, workers=2)
        assert summary.status == "completed"
        assert summary.count("written") == count, [f.error for f in summary.files if f.error][:3]
        assert all(canonical_tags(track_tags(library, t)).get("genre") == ["Ambient"] for t in ids)
    assert _no_temp_files(music)
