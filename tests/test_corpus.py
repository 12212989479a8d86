"""Every file of the shared tag corpus: readable files get the right container, broken ones an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from jamcaps_desktop.scan.scanner import scan
from jamcaps_desktop.scan.walker import NON_AUDIO_EXTENSIONS, extension

CONTAINER_BY_EXTENSION = {
    "mp3": "mp3", "flac": "flac", "ogg": "ogg", "oga": "ogg", "opus": "ogg", "spx": "ogg", "m4a": "mp4",
    "wav": "wav", "aiff": "aiff", "wma": "asf", "asf": "asf", "ape": "ape", "wv": "wavpack", "mpc": "musepack",
    "dsf": "dsf", "dff": "dff", "tta": "tta", "tak": "tak", "aac": "aac", "ac3": "ac3", "eac3": "ac3",
    "ofr": "optimfrog", "ofs": "optimfrog",
}
# Files that cannot be used, and why (the reason must say so).
BROKEN = {
    "oldape.ape": "hours",            # a pre-3.98 Monkey's Audio header mutagen misreads; FFmpeg refuses it
    "test.ofr": "cannot be decoded",  # OptimFROG: no decoder
    "test.ofs": "cannot be decoded",
    "test-dst.dff": "cannot be read",  # DST-compressed DSDIFF with no usable stream
    "emptylist.mp3": "truncated",     # 8 KB whose LAME header promises 3:37 of audio
}


def test_scan_of_the_tag_corpus(shared_corpus, library):
    root = shared_corpus / "tags"
    summary = scan(library, [root])
    assert summary.status == "completed"
    rows = {Path(p): (status, container, duration, error) for p, status, container, duration, error in
            library.conn.execute("SELECT path, status, container, duration, error FROM tracks")}
    errors = {Path(e["path"]) for e in summary.errors}
    ignored = {Path(i["path"]) for i in summary.ignored}
    checked = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        ext = extension(path.name)
        if path.name in BROKEN:
            status, _container, _duration, error = rows[path]
            assert status == "error" and BROKEN[path.name] in error, (path, error)
            assert path in errors
        elif ext in CONTAINER_BY_EXTENSION:
            status, container, duration, error = rows[path]
            assert status == "ok", (path, error)
            assert container == CONTAINER_BY_EXTENSION[ext], (path, container)
            assert 0.0 < duration < 600, (path, duration)
        elif path.name == "no_ext":
            assert rows[path][:2] == ("ok", "mp3")
        elif ext in NON_AUDIO_EXTENSIONS or path.name in ("no_ext_not_music", "LICENSE", "COPYING.txt") \
                or ext in ("dat", "toc"):
            assert path in ignored and path not in rows, path
        else:
            pytest.fail(f"unexpected corpus file {path}")
        checked += 1
    assert checked > 250


def test_truncated_copies_of_corpus_files_are_errors(shared_corpus, library, tmp_path):
    source = shared_corpus / "tags/beets/test/rsrc"
    for name in ("whitenoise.flac", "full.wv", "full.m4a", "full.aiff"):
        data = (source / name).read_bytes()
        (tmp_path / f"half-{name}").write_bytes(data[: len(data) // 2])
    summary = scan(library, [tmp_path])
    reasons = {Path(e["path"]).name: e["reason"] for e in summary.errors}
    assert set(reasons) == {f"half-{n}" for n in ("whitenoise.flac", "full.wv", "full.m4a", "full.aiff")}
    assert all(r.startswith("truncated") for r in reasons.values()), reasons


def test_scan_of_real_music_clips(shared_corpus, library):
    summary = scan(library, [shared_corpus / "audio"])
    assert summary.status == "completed" and not summary.errors
    durations = [d for (d,) in library.conn.execute("SELECT duration FROM tracks")]
    assert len(durations) == summary.added > 150
    assert max(durations) > 100  # the longest librosa clip is over two minutes
