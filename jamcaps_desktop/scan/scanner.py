"""The scan job: bring the library in line with what is on disk, doing as little work as possible.

1. Walk the folders (stat only).
2. Files whose size and mtime match their library row are unchanged: nothing is read.
3. New and changed files are read (content sniffing, stream facts, tags, fingerprint), in worker
   processes when there are many. A new file whose fingerprint matches a track whose old path is
   gone is a move: the track keeps its id and everything attached to it.
4. Tracks under the scanned folders that were not found are marked missing, never deleted.

Results are committed in small transactions, so a cancel or a crash keeps every file finished so
far; an interrupted scan marks nothing missing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.library.paths import db_path_to_fs, display_path, fs_path_to_db
from jamcaps_desktop.library.tracks import insert_track, record_values, replace_tags, store_record
from jamcaps_desktop.scan.reader import FileRecord, read_file
from jamcaps_desktop.scan.walker import FoundFile, walk

log = logging.getLogger(__name__)

PARALLEL_THRESHOLD = 64      # fewer files than this are read in-process
COMMIT_EVERY_FILES = 200
COMMIT_EVERY_SECONDS = 1.0


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
    errors: list[dict[str, str]] = field(default_factory=list)    # files under the roots that cannot be used
    ignored: list[dict[str, str]] = field(default_factory=list)   # files that are not audio
    issues: list[dict[str, str]] = field(default_factory=list)    # folders and links that could not be followed
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["error_count"] = len(self.errors)
        data["ignored_count"] = len(self.ignored)
        return data


@dataclass
class _Known:
    id: int
    path: str
    size: int
    mtime_ns: int
    status: str
    error: str | None


def scan(library: Library, roots: Iterable[str | os.PathLike[str]], *,
         progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
         workers: int | None = None) -> ScanSummary:
    """Scan ``roots`` (folders or files) into ``library``. Raises FileNotFoundError for a missing root."""
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    root_list = []
    for root in roots:
        absolute = os.path.abspath(os.fspath(root))
        if not os.path.lexists(absolute):
            raise FileNotFoundError(f"no such file or folder: {root}")
        root_list.append(absolute)
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
    to_read: list[FoundFile] = []
    seen_paths: set[str] = set()
    own_files = {os.path.abspath(str(library.path)) + suffix for suffix in ("", "-wal", "-shm", "-journal")}
    for found in walked.files:
        if found.path in own_files:
            continue  # the library itself may live inside the music folder
        db_path, _ = fs_path_to_db(found.path)
        seen_paths.add(db_path)
        if found.kind == "ignored":
            summary.ignored.append({"path": db_path, "reason": found.reason or "not audio"})
            continue
        row = known.get(db_path)
        if row is not None and row.size == found.size and row.mtime_ns == found.mtime_ns \
                and row.status != "missing":
            summary.unchanged += 1
            summary.files_seen += 1
            if row.status == "error":
                summary.errors.append({"path": db_path, "reason": row.error or "unreadable"})
            continue
        to_read.append(found)

    moved_ids: set[int] = set()
    completed = _read_and_store(library, to_read, known, seen_paths, summary, moved_ids, progress, cancel,
                                workers)
    if not completed:
        summary.status = "cancelled"
        return
    _mark_missing(library, known, seen_paths, moved_ids, walked.unreadable_dirs, summary)
    summary.status = "completed"


def _read_and_store(library: Library, to_read: list[FoundFile], known: dict[str, _Known],
                    seen_paths: set[str], summary: ScanSummary, moved_ids: set[int],
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
                _store(library, pending, known, seen_paths, summary, moved_ids)
                pending.clear()
                last_commit = time.monotonic()
            if cancel.cancelled:
                break
    finally:
        records.close()  # stop the worker pool here, not whenever the generator is collected
    if pending:
        _store(library, pending, known, seen_paths, summary, moved_ids)
    return done == total


def _read_one(found: FoundFile) -> FileRecord:
    return read_file(found.path, found.size, found.mtime_ns, expect_audio=found.kind == "audio")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means


def _records(to_read: list[FoundFile], cancel: CancelToken, workers: int | None) -> Iterator[FileRecord]:
    count = workers if workers is not None else min(4, os.cpu_count() or 1)
    if count <= 1 or len(to_read) < PARALLEL_THRESHOLD:
        for found in to_read:
            if cancel.cancelled:
                return
            yield _read_one(found)
        return
    context = multiprocessing.get_context("spawn")  # safe beside threads and GUI toolkits
    executor = ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=_ignore_sigint)
    try:
        window = count * 8
        futures = [executor.submit(_read_one, found) for found in to_read[:window]]
        next_index = len(futures)
        position = 0
        while position < len(futures):
            if cancel.cancelled:
                return
            record = futures[position].result()
            futures[position] = None  # type: ignore[call-overload]
            position += 1
            if next_index < len(to_read):
                futures.append(executor.submit(_read_one, to_read[next_index]))
                next_index += 1
            yield record
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# -- database side -----------------------------------------------------------------------------
def _prefix_range(root: str) -> tuple[str, str]:
    """Paths strictly inside ``root``: ``root/`` <= path < ``root0`` ('0' follows '/')."""
    base = root.rstrip("/")
    return base + "/", base + "0"


def _load_known(library: Library, roots: list[str]) -> dict[str, _Known]:
    known: dict[str, _Known] = {}
    columns = "id, path, size, mtime_ns, status, error"
    for root in roots:
        db_root, _ = fs_path_to_db(root)
        if os.path.isdir(root):
            low, high = _prefix_range(db_root)
            rows = library.conn.execute(
                f"SELECT {columns} FROM tracks WHERE path >= ? AND path < ?", (low, high))
        else:
            rows = library.conn.execute(f"SELECT {columns} FROM tracks WHERE path = ?", (db_root,))
        for row in rows:
            known[row[1]] = _Known(*row)
    return known


def _find_moved(library: Library, record: FileRecord, seen_paths: set[str]) -> int | None:
    """A track with the same content whose old path no longer exists, or None."""
    if not record.fingerprint:
        return None
    rows = library.conn.execute(
        "SELECT id, path, path_bytes FROM tracks WHERE fingerprint = ? AND size = ? ORDER BY id",
        (record.fingerprint, record.size)).fetchall()
    for track_id, path, path_bytes in rows:
        if path in seen_paths:
            continue
        if not os.path.lexists(db_path_to_fs(path, path_bytes)):
            return int(track_id)
    return None


def _store(library: Library, records: list[FileRecord], known: dict[str, _Known], seen_paths: set[str],
           summary: ScanSummary, moved_ids: set[int]) -> None:
    now = utc_now()
    with library.transaction() as conn:
        for record in records:
            if record.status == "ignored":
                if display_path(record.path) not in known:
                    summary.ignored.append({"path": display_path(record.path), "reason": record.error or "not audio"})
                    continue
                record.status = "error"  # a track whose file is no longer audio: say so, keep the row
            summary.files_seen += 1
            if record.status == "error":
                summary.errors.append({"path": display_path(record.path), "reason": record.error or "unreadable"})
            values = record_values(record, now, summary.scan_id)
            row = known.get(values["path"])
            if row is not None:
                track_id = row.id
                summary.updated += 1
                store_record(conn, track_id, record, now, summary.scan_id)
                continue
            moved = _find_moved(library, record, seen_paths)
            if moved is not None:
                moved_ids.add(moved)
                summary.moved += 1
                store_record(conn, moved, record, now, summary.scan_id)
                continue
            track_id = insert_track(conn, values, now)
            replace_tags(conn, track_id, record)
            summary.added += 1


def _mark_missing(library: Library, known: dict[str, _Known], seen_paths: set[str], moved_ids: set[int],
                  unreadable_dirs: list[str], summary: ScanSummary) -> None:
    blocked = [fs_path_to_db(d)[0].rstrip("/") + "/" for d in unreadable_dirs]
    vanished = [
        row.id for path, row in known.items()
        if path not in seen_paths and row.id not in moved_ids and row.status != "missing"
        and not any(path.startswith(prefix) for prefix in blocked)
    ]
    if not vanished:
        return
    now = utc_now()
    with library.transaction() as conn:
        conn.executemany("UPDATE tracks SET status = 'missing', missing_since = ?, updated_at = ? WHERE id = ?",
                         [(now, now, track_id) for track_id in vanished])
    summary.missing = len(vanished)


def _start_scan_row(library: Library, roots: list[str]) -> int:
    with library.transaction() as conn:
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
