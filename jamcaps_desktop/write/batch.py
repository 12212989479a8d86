"""Write jobs: staged values into files, one batch at a time, with a journal that makes undo exact.

For every file of a batch:

1. the tags are changed on a temporary copy and verified (``tags.edit``);
2. the journal row is committed as ``pending``, with the old and new values and the raw tag items
   the change replaces;
3. the copy replaces the file (``write.atomic``);
4. the journal row becomes ``written`` with the file's new size, mtime and fingerprint, the library's
   track row is re-read from the file, and the staged values are cleared, in one transaction.

A crash between 2 and 4 leaves a ``pending`` row; the next write or undo looks at the file and
settles it as written or not. Each file is wholly old or wholly new at every moment.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.library.paths import fs_path
from jamcaps_desktop.library.queries import canonical_tags, track_tags
from jamcaps_desktop.library.tracks import store_record, store_written
from jamcaps_desktop.scan.fingerprint import fingerprint_file, fingerprint_fileobj
from jamcaps_desktop.scan.reader import read_file
from jamcaps_desktop.tags.adapters import UnsupportedFieldError
from jamcaps_desktop.tags.edit import (
    EditResult,
    TagEditError,
    apply_changes,
    restore_backup,
    verify_changes,
)
from jamcaps_desktop.tags.read import TagReadResult
from jamcaps_desktop.tags.values import normalise
from jamcaps_desktop.write.atomic import TEMP_PREFIX, TEMP_SUFFIX, FileState, WriteError, rewrite_file

log = logging.getLogger(__name__)

Changes = dict[str, list[str]]
WRITER_THREADS = 4  # files in flight at once: one file's fsync overlaps another's tag work


@dataclass(frozen=True)
class WriteOptions:
    id3_version: int | None = None   # None keeps each file's own ID3 version (v2.4 for new tags)
    keep_mtime: bool = False


@dataclass
class FileOutcome:
    track_id: int | None
    path: str
    status: str                      # written, failed, unchanged (and, in a dry run, planned)
    changes: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # field → (old, new)
    error: str | None = None


@dataclass
class BatchSummary:
    batch_id: int | None
    kind: str                        # write, undo, or dry-run
    status: str
    files: list[FileOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "kind": self.kind,
            "status": self.status,
            "written": self.count("written"),
            "failed": self.count("failed"),
            "unchanged": self.count("unchanged"),
            "planned": self.count("planned"),
            "files": [
                {"track_id": f.track_id, "path": f.path, "status": f.status, "error": f.error,
                 "changes": {k: {"old": old, "new": new} for k, (old, new) in f.changes.items()}}
                for f in self.files
            ],
        }


# -- staging ------------------------------------------------------------------------------------
def stage(library: Library, track_ids: Iterable[int], values: Changes, origin: str = "user") -> int:
    """Stage ``values`` (field → values; [] stages a removal) on tracks. Returns the number of tracks."""
    normalised = {name: normalise(name, vals) for name, vals in values.items()}
    ids = list(dict.fromkeys(track_ids))
    now = utc_now()
    with library.transaction() as conn:
        conn.executemany(
            "INSERT INTO staged_values (track_id, field, vals, origin, staged_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (track_id, field) DO UPDATE SET vals = excluded.vals, origin = excluded.origin, "
            "staged_at = excluded.staged_at",
            [(tid, name, json.dumps(vals, ensure_ascii=False), origin, now)
             for tid in ids for name, vals in normalised.items()])
    return len(ids)


def unstage(library: Library, track_ids: Iterable[int] | None = None, fields: Iterable[str] | None = None) -> int:
    clauses, params = [], []
    if track_ids is not None:
        ids = list(track_ids)
        clauses.append(f"track_id IN ({', '.join('?' for _ in ids)})")
        params += ids
    if fields:
        names = list(fields)
        clauses.append(f"field IN ({', '.join('?' for _ in names)})")
        params += names
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    with library.transaction() as conn:
        return conn.execute(f"DELETE FROM staged_values{where}", params).rowcount


def staged_changes(library: Library, track_ids: Iterable[int] | None = None) -> dict[int, Changes]:
    rows = library.conn.execute("SELECT track_id, field, vals FROM staged_values ORDER BY track_id, field")
    wanted = set(track_ids) if track_ids is not None else None
    out: dict[int, Changes] = {}
    for track_id, name, vals in rows:
        if wanted is None or track_id in wanted:
            out.setdefault(track_id, {})[name] = json.loads(vals)
    return out


# -- helpers ------------------------------------------------------------------------------------
def _track(library: Library, track_id: int) -> dict[str, Any] | None:
    row = library.conn.execute(
        "SELECT id, path, path_key, size, mtime_ns, container, codec, status, error FROM tracks WHERE id = ?",
        (track_id,)).fetchone()
    if row is None:
        return None
    keys = ("id", "path", "path_key", "size", "mtime_ns", "container", "codec", "status", "error")
    track = dict(zip(keys, row, strict=True))
    track["path_key"] = bytes(track["path_key"])
    return track


def _diff(current: Changes, wanted: Changes) -> dict[str, tuple[list[str], list[str]]]:
    return {name: (current.get(name, []), vals) for name, vals in wanted.items() if current.get(name, []) != vals}


def _usable(track: dict[str, Any] | None) -> str | None:
    if track is None:
        return "the track is no longer in the library"
    if track["status"] == "missing":
        return "the file is missing"
    if track["status"] != "ok":
        return f"the file could not be read when scanned ({track['error']})"
    return None


def _start_batch(library: Library, kind: str, options: WriteOptions, undo_of: int | None = None) -> int:
    with library.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO write_batches (kind, undo_of, started_at, options) VALUES (?, ?, ?, ?)",
            (kind, undo_of, utc_now(),
             json.dumps({"id3_version": options.id3_version, "keep_mtime": options.keep_mtime})))
        return int(cursor.lastrowid)  # type: ignore[arg-type]


def _finish_batch(library: Library, batch_id: int, status: str, summary: BatchSummary) -> None:
    with library.transaction() as conn:
        conn.execute("UPDATE write_batches SET status = ?, finished_at = ?, written = ?, failed = ?, unchanged = ? "
                     "WHERE id = ?", (status, utc_now(), summary.count("written"), summary.count("failed"),
                                      summary.count("unchanged"), batch_id))


def _journal_file(library: Library, batch_id: int, track: dict[str, Any], status: str, *,
                  error: str | None = None, result: EditResult | None = None,
                  changes: dict[str, tuple[list[str], list[str]]] | None = None) -> int:
    with library.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO write_files (batch_id, track_id, path, path_key, status, error, tag_format, backup, "
            "before_size, before_mtime_ns, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (batch_id, track["id"], track["path"], track["path_key"], status, error,
             result.tag_format if result else None,
             json.dumps(result.backup) if result else None, track["size"], track["mtime_ns"],
             None if status == "pending" else utc_now()))
        file_id = int(cursor.lastrowid)  # type: ignore[arg-type]
        if changes:
            conn.executemany(
                "INSERT INTO write_changes (write_file_id, field, old_values, new_values) VALUES (?, ?, ?, ?)",
                [(file_id, name, json.dumps(old, ensure_ascii=False), json.dumps(new, ensure_ascii=False))
                 for name, (old, new) in changes.items()])
    return file_id


def _settle(library: Library, file_id: int, track_id: int, state: FileState, written: _Written,
            clear_fields: list[str] | None) -> None:
    """The file now holds the new tags: record its new state and tags in the journal and the library."""
    now = utc_now()
    with library.transaction() as conn:
        conn.execute("UPDATE write_files SET status = 'written', after_size = ?, after_mtime_ns = ?, "
                     "after_fingerprint = ?, finished_at = ? WHERE id = ?",
                     (state.size, state.mtime_ns, written.fingerprint, now, file_id))
        store_written(conn, track_id, size=state.size, mtime_ns=state.mtime_ns, ctime_ns=state.ctime_ns,
                      fingerprint=written.fingerprint, tags=written.tags.values, tag_formats=written.tags.formats,
                      now=now)
        if clear_fields:
            conn.executemany("DELETE FROM staged_values WHERE track_id = ? AND field = ?",
                             [(track_id, name) for name in clear_fields])


def _settle_from_disk(library: Library, file_id: int, track_id: int, file_path: str, state: FileState) -> None:
    """Like _settle, reading the file (after an interruption, when nothing else is known)."""
    record = read_file(file_path, state.size, state.mtime_ns, state.ctime_ns, expect_audio=True)
    now = utc_now()
    with library.transaction() as conn:
        conn.execute("UPDATE write_files SET status = 'written', after_size = ?, after_mtime_ns = ?, "
                     "after_fingerprint = ?, finished_at = ? WHERE id = ?",
                     (state.size, state.mtime_ns, record.fingerprint, now, file_id))
        store_record(conn, track_id, record, now)


def _fail(library: Library, file_id: int, error: str) -> None:
    with library.transaction() as conn:
        conn.execute("UPDATE write_files SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                     (error, utc_now(), file_id))


# -- writing ------------------------------------------------------------------------------------
def plan(library: Library, changes: dict[int, Changes]) -> BatchSummary:
    """What a write would change, file by file, from the library's view of each file (a dry run)."""
    summary = BatchSummary(None, "dry-run", "completed")
    for track_id, wanted in changes.items():
        track = _track(library, track_id)
        problem = _usable(track)
        path = track["path"] if track else f"track {track_id}"
        if problem:
            summary.files.append(FileOutcome(track_id, path, "failed", error=problem))
            continue
        current = canonical_tags(track_tags(library, track_id))
        diff = _diff(current, wanted)
        summary.files.append(FileOutcome(track_id, path, "planned" if diff else "unchanged", diff))
    return summary


def _run_files(library: Library, items: list[Any], work: Callable[[Any], FileOutcome], stage_name: str,
               progress: ProgressCallback, cancel: CancelToken) -> tuple[list[FileOutcome], bool]:
    """Run ``work`` over ``items`` on a few threads, outcomes in the order of ``items``.

    Each file is still written by one thread from start to end; threads only let one file's fsync
    overlap another file's tag work. Returns (outcomes, finished).
    """
    total = len(items)
    progress(Progress(stage_name, 0, total))
    outcomes: list[FileOutcome] = []
    if total <= 1 or WRITER_THREADS <= 1:
        for done, item in enumerate(items, start=1):
            if cancel.cancelled:
                return outcomes, False
            outcomes.append(work(item))
            progress(Progress(stage_name, done, total, current=outcomes[-1].path))
        return outcomes, True
    with ThreadPoolExecutor(max_workers=WRITER_THREADS, thread_name_prefix="jamcaps-writer") as pool:
        window = WRITER_THREADS * 2
        futures = [pool.submit(work, item) for item in items[:window]]
        submitted = len(futures)
        try:
            for index in range(total):
                if index >= len(futures):
                    break  # cancelled: nothing more was submitted
                outcomes.append(futures[index].result())
                progress(Progress(stage_name, index + 1, total, current=outcomes[-1].path))
                if submitted < total and not cancel.cancelled:
                    futures.append(pool.submit(work, items[submitted]))
                    submitted += 1
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return outcomes, len(outcomes) == total


def write_changes(library: Library, changes: dict[int, Changes], *, options: WriteOptions | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                  clear_staged: bool = True) -> BatchSummary:
    """Write ``changes`` (track id → field → values) into the files, as one journaled batch."""
    options = options or WriteOptions()
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    with library.job_lock("write"):
        recover(library)
        batch_id = _start_batch(library, "write", options)
        summary = BatchSummary(batch_id, "write", "running")
        try:
            summary.files, finished = _run_files(
                library, list(changes.items()),
                lambda item: _write_one(library, batch_id, item[0], item[1], options, clear_staged),
                "write", progress, cancel)
        except BaseException:
            _finish_batch(library, batch_id, "interrupted", summary)
            raise
        summary.status = "completed" if finished else "cancelled"
        _finish_batch(library, batch_id, summary.status, summary)
    return summary


@dataclass
class _Written:
    """What an edit of the temporary copy leaves behind for the journal and the library."""

    edit: EditResult
    tags: TagReadResult
    fingerprint: str


def _edited(handle: Any, result: EditResult, tags: TagReadResult) -> _Written:
    handle.flush()
    size = handle.seek(0, os.SEEK_END)
    return _Written(result, tags, fingerprint_fileobj(handle, size))


def _write_one(library: Library, batch_id: int, track_id: int, wanted: Changes, options: WriteOptions,
               clear_staged: bool) -> FileOutcome:
    with library.lock:
        track = _track(library, track_id)
        current = canonical_tags(track_tags(library, track_id)) if track else {}
    path = track["path"] if track else f"track {track_id}"
    problem = _usable(track)
    if problem:
        return FileOutcome(track_id, path, "failed", error=problem)
    assert track is not None
    try:
        wanted = {name: normalise(name, vals) for name, vals in wanted.items()}
    except ValueError as exc:
        return FileOutcome(track_id, path, "failed", error=str(exc))
    diff = _diff(current, wanted)
    if not diff:
        if clear_staged:
            with library.transaction() as conn:
                conn.executemany("DELETE FROM staged_values WHERE track_id = ? AND field = ?",
                                 [(track_id, name) for name in wanted])
        return FileOutcome(track_id, path, "unchanged")
    file_path = fs_path(track["path_key"])
    to_write = {name: wanted[name] for name in diff}
    journal: dict[str, int] = {}

    def edit(handle: Any) -> _Written:
        result = apply_changes(handle, track["container"], track["codec"], to_write,
                               id3_version=options.id3_version)
        handle.flush()
        tags = verify_changes(handle, track["container"], track["codec"], result, to_write)
        return _edited(handle, result, tags)

    def record_pending(written: _Written) -> None:
        old_new = {name: (written.edit.old_values.get(name, []), to_write[name]) for name in to_write}
        journal["id"] = _journal_file(library, batch_id, track, "pending", result=written.edit, changes=old_new)

    try:
        written, state = rewrite_file(file_path, edit, expected=FileState(track["size"], track["mtime_ns"]),
                                      keep_mtime=options.keep_mtime, before_replace=record_pending)
    except (WriteError, TagEditError, UnsupportedFieldError) as exc:
        if "id" in journal:
            _fail(library, journal["id"], str(exc))
        else:
            _journal_file(library, batch_id, track, "failed", error=str(exc),
                          changes={n: (current.get(n, []), v) for n, v in to_write.items()})
        return FileOutcome(track_id, path, "failed", diff, error=str(exc))
    _settle(library, journal["id"], track_id, state, written, list(wanted) if clear_staged else None)
    old_new = {name: (written.edit.old_values.get(name, []), to_write[name]) for name in to_write}
    return FileOutcome(track_id, path, "written", old_new)


# -- undo ---------------------------------------------------------------------------------------
class UndoError(Exception):
    """Nothing can be undone (no such batch, or nothing left in it)."""


def last_undoable_batch(library: Library) -> int | None:
    row = library.conn.execute(
        "SELECT b.id FROM write_batches b WHERE EXISTS (SELECT 1 FROM write_files f WHERE f.batch_id = b.id "
        "AND f.status = 'written') ORDER BY b.id DESC LIMIT 1").fetchone()
    return int(row[0]) if row else None


def undo(library: Library, batch_id: int | None = None, *, progress: ProgressCallback | None = None,
         cancel: CancelToken | None = None) -> BatchSummary:
    """Restore what batch ``batch_id`` (default: the latest with written files) replaced."""
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    with library.job_lock("undo"):
        recover(library)
        if batch_id is None:
            batch_id = last_undoable_batch(library)
            if batch_id is None:
                raise UndoError("there is nothing to undo")
        original = library.conn.execute("SELECT id, options FROM write_batches WHERE id = ?",
                                        (batch_id,)).fetchone()
        if original is None:
            raise UndoError(f"there is no write batch {batch_id}")
        rows = library.conn.execute(
            "SELECT id, track_id, path, path_key, backup, after_size, after_mtime_ns, after_fingerprint "
            "FROM write_files WHERE batch_id = ? AND status = 'written' ORDER BY id", (batch_id,)).fetchall()
        if not rows:
            raise UndoError(f"batch {batch_id} has nothing left to undo")
        options = WriteOptions(keep_mtime=bool(json.loads(original[1]).get("keep_mtime")))
        undo_id = _start_batch(library, "undo", options, undo_of=batch_id)
        summary = BatchSummary(undo_id, "undo", "running")
        try:
            summary.files, finished = _run_files(library, rows, lambda row: _undo_one(library, undo_id, row, options),
                                                 "undo", progress, cancel)
        except BaseException:
            _finish_batch(library, undo_id, "interrupted", summary)
            raise
        summary.status = "completed" if finished else "cancelled"
        _finish_batch(library, undo_id, summary.status, summary)
    return summary


def _undo_one(library: Library, undo_id: int, row: tuple[Any, ...], options: WriteOptions) -> FileOutcome:
    file_id, track_id, path, key, backup_json, after_size, after_mtime, after_fp = row
    with library.lock:
        track = _track(library, track_id) if track_id is not None else None
        changes = {name: (json.loads(new), json.loads(old)) for name, old, new in library.conn.execute(
            "SELECT field, old_values, new_values FROM write_changes WHERE write_file_id = ?", (file_id,))}
    file_path = fs_path(track["path_key"] if track else bytes(key))
    shown = track["path"] if track else path
    try:
        state = FileState.of(file_path)
    except OSError:
        return FileOutcome(track_id, shown, "failed", changes, error="the file is not there any more")
    if (state.size, state.mtime_ns) != (after_size, after_mtime) or fingerprint_file(file_path) != after_fp:
        return FileOutcome(track_id, shown, "failed", changes,
                           error="the file changed after it was written; it was left as it is")
    if track is None:
        return FileOutcome(None, shown, "failed", changes, error="the track is no longer in the library")
    backup = json.loads(backup_json)
    restore_to = {name: old for name, (_new, old) in changes.items()}
    journal: dict[str, int] = {}

    def edit(handle: Any) -> _Written:
        result = restore_backup(handle, track["container"], track["codec"], backup)
        handle.flush()
        tags = verify_changes(handle, track["container"], track["codec"], result, restore_to)
        return _edited(handle, result, tags)

    def record_pending(written: _Written) -> None:
        journal["id"] = _journal_file(library, undo_id, {**track, "size": state.size, "mtime_ns": state.mtime_ns},
                                      "pending", result=written.edit, changes=changes)

    try:
        written, new_state = rewrite_file(file_path, edit, expected=state, keep_mtime=options.keep_mtime,
                                          before_replace=record_pending)
    except (WriteError, TagEditError) as exc:
        if "id" in journal:
            _fail(library, journal["id"], str(exc))
        return FileOutcome(track_id, shown, "failed", changes, error=str(exc))
    _settle(library, journal["id"], track_id, new_state, written, None)
    with library.transaction() as conn:
        conn.execute("UPDATE write_files SET status = 'undone' WHERE id = ?", (file_id,))
    return FileOutcome(track_id, shown, "written", changes)


# -- recovery -----------------------------------------------------------------------------------
def recover(library: Library) -> int:
    """Settle journal rows a crash left ``pending``; returns how many were settled.

    A pending row's file holds either the old or the new values (the rename is atomic); which one
    is found by reading the file. Temporary copies left beside it are removed.
    """
    rows = library.conn.execute(
        "SELECT f.id, f.track_id, f.path, f.path_key, f.batch_id FROM write_files f "
        "WHERE f.status = 'pending'").fetchall()
    for file_id, track_id, path, key, batch_id in rows:
        file_path = fs_path(bytes(key))
        _remove_temp_copies(file_path)
        changes = {name: json.loads(new) for name, new in library.conn.execute(
            "SELECT field, new_values FROM write_changes WHERE write_file_id = ?", (file_id,))}
        try:
            state = FileState.of(file_path)
        except OSError:
            _fail(library, file_id, "interrupted, and the file is gone")
            continue
        record = read_file(file_path, state.size, state.mtime_ns, expect_audio=True)
        found: Changes = {}
        for tag in record.tags:
            if tag.field in changes and tag.value not in found.setdefault(tag.field, []):
                found[tag.field].append(tag.value)
        if all(found.get(name, []) == vals for name, vals in changes.items()) and track_id is not None:
            _settle_from_disk(library, file_id, track_id, file_path, state)
            log.info("write of %s was completed before an interruption", path)
        else:
            _fail(library, file_id, "interrupted before the file was replaced; the file was not changed")
        with library.transaction() as conn:
            conn.execute("UPDATE write_batches SET status = 'interrupted' WHERE id = ? AND status = 'running'",
                         (batch_id,))
    return len(rows)


def _remove_temp_copies(file_path: str) -> None:
    folder, name = os.path.split(file_path)
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if entry.startswith(TEMP_PREFIX) and entry.endswith(f"-{name}{TEMP_SUFFIX}"):
            try:
                os.unlink(os.path.join(folder, entry))
            except OSError:
                log.warning("could not remove the temporary file %s", entry)


# -- history ------------------------------------------------------------------------------------
def history(library: Library, limit: int = 50) -> list[dict[str, Any]]:
    keys = ("id", "kind", "undo_of", "started_at", "finished_at", "status", "written", "failed", "unchanged")
    rows = library.conn.execute(
        f"SELECT {', '.join(keys)} FROM write_batches ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    out = []
    for row in rows:
        item = dict(zip(keys, row, strict=True))
        item["undone"] = library.conn.execute(
            "SELECT COUNT(*) FROM write_files WHERE batch_id = ? AND status = 'undone'", (row[0],)).fetchone()[0]
        out.append(item)
    return out


def batch_details(library: Library, batch_id: int) -> list[dict[str, Any]]:
    files = library.conn.execute(
        "SELECT id, track_id, path, status, error FROM write_files WHERE batch_id = ? ORDER BY id",
        (batch_id,)).fetchall()
    out = []
    for file_id, track_id, path, status, error in files:
        changes = {name: {"old": json.loads(old), "new": json.loads(new)} for name, old, new in library.conn.execute(
            "SELECT field, old_values, new_values FROM write_changes WHERE write_file_id = ? ORDER BY field",
            (file_id,))}
        out.append({"track_id": track_id, "path": path, "status": status, "error": error, "changes": changes})
    return out
