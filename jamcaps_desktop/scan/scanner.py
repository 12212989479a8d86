"""The scan job: bring the library in line with what is on disk, doing as little work as possible.

1. Walk the folders (stat only). Roots are resolved to their real paths, so a folder scanned
   through a symbolic link is the same folder.
2. Files whose size, mtime and ctime match their library row are unchanged: nothing is read.
   (Rows in error are read again: the problem may have been fixed, a permission for example.)
3. New and changed files are read (content sniffing, stream facts, tags, fingerprint), in worker
   processes when there are many. A file whose content a track had at another path is that track,
   moved: it keeps its id and everything attached to it.
4. Tracks under the scanned folders that were not found are marked missing, never deleted.

Results are committed in small transactions, so a cancel or a crash keeps every file finished so
far; an interrupted scan marks nothing missing. One scan or write runs on a library at a time.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.jobs.workers import in_order, tag_worker_context
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.library.paths import display_path, fs_path, key_range, path_key, real_path
from jamcaps_desktop.library.tracks import insert_track, record_values, replace_tags, store_record
from jamcaps_desktop.scan.fingerprint import fingerprint_file
from jamcaps_desktop.scan.reader import FileRecord, read_file
from jamcaps_desktop.scan.walker import FoundFile, walk

log = logging.getLogger(__name__)

PARALLEL_THRESHOLD = 64      # fewer files than this are read in-process
COMMIT_EVERY_FILES = 200
COMMIT_EVERY_SECONDS = 1.0
READER_CRASHED = "the file reader crashed on this file (a damaged file can crash the audio decoder)"


@dataclass
class ScanSummary:
    scan_id: int
    status: str                      # "completed" or "cancelled"
    roots: list[str]
    files_seen: int = 0              # audio files found (by name or by content)
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0
    missing: int = 0                 # tracks newly marked missing by this scan
    errors: list[dict[str, str]] = field(default_factory=list)   # files under the roots that cannot be used
    ignored: list[dict[str, str]] = field(default_factory=list)  # files that are not audio
    issues: list[dict[str, str]] = field(default_factory=list)   # folders and links that could not be followed
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_count"] = len(self.errors)
        data["ignored_count"] = len(self.ignored)
        return data


@dataclass
class _Known:
    id: int
    key: bytes
    size: int
    mtime_ns: int
    ctime_ns: int | None
    status: str
    error: str | None
    fingerprint: str | None


@dataclass
class _Context:
    """What one scan knows while it stores records."""

    known: dict[bytes, _Known]          # tracks under the roots, by path key
    seen: set[bytes]                    # every path key the walk found
    changed: set[bytes]                 # known paths whose file is read again
    roots: list[str]
    ignored: dict[bytes, tuple[tuple[int, int, int | None], str]]  # non-audio files remembered from before
    moved_ids: set[int] = field(default_factory=set)


def scan(library: Library, roots: Iterable[str | os.PathLike[str]], *,
         progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
         workers: int | None = None) -> ScanSummary:
    """Scan ``roots`` (folders or files) into ``library``. Raises FileNotFoundError for a missing root."""
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    root_list: list[str] = []
    for root in roots:
        given = os.fspath(root)
        if not os.path.lexists(given):
            raise FileNotFoundError(f"no such file or folder: {given}")
        resolved = real_path(given)
        if resolved not in root_list:
            root_list.append(resolved)
    with library.job_lock("scan"):
        started = time.monotonic()
        scan_id = _start_scan_row(library, root_list)
        summary = ScanSummary(scan_id=scan_id, status="running", roots=[display_path(r) for r in root_list])
        try:
            _run(library, root_list, summary, progress, cancel, workers)
        except BaseException:
            summary.status = "interrupted"
            _finish_scan_row(library, summary)
            raise
        summary.elapsed_s = round(time.monotonic() - started, 3)
        _finish_scan_row(library, summary)
    return summary


def _same_stat(row: _Known, found: FoundFile) -> bool:
    return (row.size, row.mtime_ns) == (found.size, found.mtime_ns) and \
        (row.ctime_ns is None or row.ctime_ns == found.ctime_ns)


def _run(library: Library, roots: list[str], summary: ScanSummary, progress: ProgressCallback,
         cancel: CancelToken, workers: int | None) -> None:
    progress(Progress("walk", 0, None, message="looking for files"))
    walked = walk(roots, on_file=lambda n: progress(Progress("walk", n, None)) if n % 500 == 0 else None,
                  should_stop=lambda: cancel.cancelled)
    progress(Progress("walk", len(walked.files), len(walked.files), message="done"))
    summary.issues = [{"path": display_path(i.path), "kind": i.kind, "reason": i.reason} for i in walked.issues]
    if cancel.cancelled:
        summary.status = "cancelled"
        return

    known = _load_known(library, roots)
    ignored_before = _load_ignored(library, roots)
    own_files = {real_path(str(library.path)) + suffix for suffix in ("", "-wal", "-shm", "-journal", ".lock")}
    new: list[FoundFile] = []
    changed: list[FoundFile] = []
    context = _Context(known, set(), set(), roots, ignored_before)
    for found in walked.files:
        if found.path in own_files:
            continue  # the library itself may live inside the music folder
        key = path_key(found.path)
        context.seen.add(key)
        if found.kind == "ignored":
            summary.ignored.append({"path": display_path(found.path), "reason": found.reason or "not audio"})
            continue
        row = known.get(key)
        if row is None:
            cached = ignored_before.get(key)
            if cached is not None and cached[0] == (found.size, found.mtime_ns, found.ctime_ns):
                summary.ignored.append({"path": display_path(found.path), "reason": cached[1]})
                continue
            new.append(found)
        elif _same_stat(row, found) and row.status == "ok":
            summary.unchanged += 1
            summary.files_seen += 1
        else:
            changed.append(found)
            context.changed.add(key)

    # New paths first: a file that moved claims its track before its old path is looked at again.
    to_read = new + changed
    completed = _read_and_store(library, to_read, context, summary, progress, cancel, workers)
    if not completed:
        summary.status = "cancelled"
        return
    _mark_missing(library, context, walked.unreadable_dirs, summary)
    summary.status = "completed"


def _read_and_store(library: Library, to_read: list[FoundFile], context: _Context, summary: ScanSummary,
                    progress: ProgressCallback, cancel: CancelToken, workers: int | None) -> bool:
    total = len(to_read)
    progress(Progress("read", 0, total))
    if not total:
        return True
    pending: list[FileRecord] = []
    last_commit = time.monotonic()
    done = 0
    records = _records(to_read, cancel, workers)
    try:
        for record in records:
            pending.append(record)
            done += 1
            progress(Progress("read", done, total, current=record.path))
            if len(pending) >= COMMIT_EVERY_FILES or time.monotonic() - last_commit > COMMIT_EVERY_SECONDS:
                _store(library, pending, context, summary)
                pending.clear()
                last_commit = time.monotonic()
            if cancel.cancelled:
                break
    finally:
        records.close()  # stop the worker pool here, not whenever the generator is collected
    if pending:
        _store(library, pending, context, summary)
    return done == total


def _read_one(found: FoundFile) -> FileRecord:
    return read_file(found.path, found.size, found.mtime_ns, found.ctime_ns, expect_audio=found.kind == "audio")


def _crashed(found: FoundFile) -> FileRecord:
    return FileRecord(found.path, found.size, found.mtime_ns, found.ctime_ns, status="error", error=READER_CRASHED)


def _records(to_read: list[FoundFile], cancel: CancelToken, workers: int | None) -> Iterator[FileRecord]:
    """Records in the order of ``to_read``, read in parallel worker processes when there are many.

    A worker that dies (a decoder crash, the out-of-memory killer) does not stop the scan: the files that
    were in flight are read again one at a time, each in its own worker, so the one that kills its reader
    is found and recorded as an error (``jobs.workers.in_order``).
    """
    count = workers if workers is not None else min(4, os.cpu_count() or 1)
    # never a fork of this process: safe beside threads and GUI toolkits
    context = tag_worker_context() if count > 1 and len(to_read) >= PARALLEL_THRESHOLD else None
    return in_order(_read_one, to_read, count, cancel, ahead=count * 8, crashed=_crashed,
                    sequential_below=PARALLEL_THRESHOLD, context=context)


# -- database side -----------------------------------------------------------------------------
def _root_rows(library: Library, roots: list[str], sql: str) -> Iterator[tuple[Any, ...]]:
    """Rows of ``sql`` (which ends in a path_key condition placeholder) for every root."""
    for root in roots:
        key = path_key(root)
        if os.path.isdir(root):
            low, high = key_range(key)
            yield from library.conn.execute(sql + " WHERE path_key >= ? AND path_key < ?", (low, high))
        else:
            yield from library.conn.execute(sql + " WHERE path_key = ?", (key,))


def _load_known(library: Library, roots: list[str]) -> dict[bytes, _Known]:
    sql = "SELECT id, path_key, size, mtime_ns, ctime_ns, status, error, fingerprint FROM tracks"
    return {bytes(row[1]): _Known(row[0], bytes(row[1]), *row[2:]) for row in _root_rows(library, roots, sql)}


def _load_ignored(library: Library, roots: list[str]) -> dict[bytes, tuple[tuple[int, int, int | None], str]]:
    sql = "SELECT path_key, size, mtime_ns, ctime_ns, reason FROM ignored_files"
    return {bytes(r[0]): ((r[1], r[2], r[3]), r[4]) for r in _root_rows(library, roots, sql)}


def _move_source(library: Library, record: FileRecord, context: _Context, own_id: int | None) -> _Known | None:
    """The track whose content ``record`` now holds at a new path, if that content left its old path.

    A candidate qualifies when its old path is gone from a folder that still exists (so a file on an
    unmounted drive is never taken for a moved one), when its old path is being read again in this
    scan and no longer holds that content, or when its old path is a link to this file.
    """
    if not record.fingerprint:
        return None
    rows = library.conn.execute(
        "SELECT id, path_key, size, mtime_ns, ctime_ns, status, error, fingerprint FROM tracks "
        "WHERE fingerprint = ? AND size = ? ORDER BY id", (record.fingerprint, record.size)).fetchall()
    for row in rows:
        candidate = _Known(row[0], bytes(row[1]), *row[2:])
        if candidate.id == own_id or candidate.id in context.moved_ids:
            continue
        if b"\x00" in candidate.key:
            return candidate  # a detached track (its path was taken by another): its content is back
        old_path = fs_path(candidate.key)
        if candidate.key in context.seen:
            if candidate.key in context.changed and _content_left(old_path, candidate.fingerprint):
                return candidate
            continue
        if not os.path.lexists(old_path) and os.path.isdir(os.path.dirname(old_path)):
            return candidate
        if os.path.lexists(old_path) and real_path(old_path) == record.path:
            return candidate  # the old path was another name (a link) for this very file
    return None


def _content_left(path: str, fingerprint: str | None) -> bool:
    try:
        return fingerprint_file(path) != fingerprint
    except OSError:
        return True


def _store(library: Library, records: list[FileRecord], context: _Context, summary: ScanSummary) -> None:
    now = utc_now()
    with library.transaction() as conn:
        for record in records:
            key = path_key(record.path)
            row = context.known.get(key)
            if record.status == "ignored":
                if row is None:
                    summary.ignored.append({"path": display_path(record.path), "reason": record.error or "not audio"})
                    conn.execute("INSERT OR REPLACE INTO ignored_files (path_key, size, mtime_ns, ctime_ns, reason) "
                                 "VALUES (?, ?, ?, ?, ?)",
                                 (key, record.size, record.mtime_ns, record.ctime_ns, record.error or "not audio"))
                    continue
                record.status = "error"  # a track whose file is no longer audio: say so, keep the row
            summary.files_seen += 1
            if record.status == "error":
                summary.errors.append({"path": display_path(record.path), "reason": record.error or "unreadable"})
            source = _move_source(library, record, context, row.id if row else None)
            if source is not None and (row is None or row.fingerprint != record.fingerprint):
                if row is not None:
                    # this path's old track stays, without a file (its content is gone or elsewhere)
                    _detach(conn, row, now)
                    context.known.pop(key, None)
                context.known.pop(source.key, None)
                context.moved_ids.add(source.id)
                store_record(conn, source.id, record, now, summary.scan_id)
                summary.moved += 1
            elif row is not None:
                store_record(conn, row.id, record, now, summary.scan_id)
                if row.fingerprint == record.fingerprint and row.status == record.status:
                    summary.unchanged += 1  # same content: an error row read again, or only its times changed
                else:
                    summary.updated += 1
            else:
                track_id = insert_track(conn, record_values(record, now, summary.scan_id), now)
                replace_tags(conn, track_id, record)
                summary.added += 1
            conn.execute("DELETE FROM ignored_files WHERE path_key = ?", (key,))


def _detach(conn: Any, row: _Known, now: str) -> None:
    """Mark a track missing and free its path (another track's file now lives there)."""
    orphan_key = row.key + b"\x00missing-" + str(row.id).encode()
    conn.execute("UPDATE tracks SET status = 'missing', missing_since = ?, updated_at = ?, path_key = ? "
                 "WHERE id = ?", (now, now, orphan_key, row.id))


def _mark_missing(library: Library, context: _Context, unreadable: list[str], summary: ScanSummary) -> None:
    blocked = [path_key(d).rstrip(b"/") + b"/" for d in unreadable] + [path_key(d) for d in unreadable]
    vanished = [
        row.id for key, row in context.known.items()
        if key not in context.seen and row.id not in context.moved_ids and row.status != "missing"
        and not any(key == prefix or key.startswith(prefix) for prefix in blocked)
    ]
    now = utc_now()
    with library.transaction() as conn:
        if vanished:
            conn.executemany("UPDATE tracks SET status = 'missing', missing_since = ?, updated_at = ? WHERE id = ?",
                             [(now, now, track_id) for track_id in vanished])
        # forget ignored files that are gone
        conn.executemany("DELETE FROM ignored_files WHERE path_key = ?",
                         [(key,) for key in context.ignored if key not in context.seen])
    summary.missing = len(vanished)


def _start_scan_row(library: Library, roots: list[str]) -> int:
    with library.transaction() as conn:
        # the job lock is held: a scan still marked running was cut short
        conn.execute("UPDATE scans SET status = 'interrupted' WHERE status = 'running'")
        cursor = conn.execute("INSERT INTO scans (started_at, roots, status) VALUES (?, ?, 'running')",
                              (utc_now(), json.dumps([display_path(r) for r in roots])))
        return int(cursor.lastrowid)  # type: ignore[arg-type]


def _finish_scan_row(library: Library, summary: ScanSummary) -> None:
    issues = [(summary.scan_id, i["path"], i["kind"], i["reason"]) for i in summary.issues]
    issues += [(summary.scan_id, i["path"], "ignored", i["reason"]) for i in summary.ignored]
    with library.transaction() as conn:
        conn.execute(
            "UPDATE scans SET finished_at = ?, status = ?, files_seen = ?, added = ?, updated = ?, "
            "unchanged = ?, moved = ?, missing = ?, errors = ?, ignored = ? WHERE id = ?",
            (utc_now(), summary.status, summary.files_seen, summary.added, summary.updated, summary.unchanged,
             summary.moved, summary.missing, len(summary.errors), len(summary.ignored), summary.scan_id))
        conn.executemany("INSERT INTO scan_issues (scan_id, path, kind, reason) VALUES (?, ?, ?, ?)", issues)
