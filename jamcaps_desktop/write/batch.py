"""Write jobs: staged values into files, one batch at a time, with a journal that makes undo exact.

For every file of a batch:

1. the tags are changed on a temporary copy and verified (``tags.edit``), and the copy is flushed to
   the disk (a group's copies with one sync of their file system where it allows that, else each in
   threads: a journaling file system then commits them together);
2. the journal row is committed as ``pending``, with the old and new values and the raw tag items
   the change replaces;
3. the copy replaces the file (``write.atomic``);
4. the journal row becomes ``written`` with the file's new size, mtime and fingerprint, the library's
   track row is re-read from the file, and the staged values are cleared, in one transaction.

A crash between 2 and 4 leaves a ``pending`` row; the next write or undo looks at the file and
settles it as written or not. Each file is wholly old or wholly new at every moment.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.jobs.workers import init_worker, tag_worker_context
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.library.paths import fs_path
from jamcaps_desktop.library.tracks import WrittenState, store_record, store_written
from jamcaps_desktop.scan.reader import read_file
from jamcaps_desktop.tags.values import normalise
from jamcaps_desktop.write import atomic
from jamcaps_desktop.write.atomic import FileState, PreparedCopy, WriteError
from jamcaps_desktop.write.prepare import Changes, FileTask, Prepared, prepare, prepare_chunk

log = logging.getLogger(__name__)

PARALLEL_WRITE_THRESHOLD = 24   # fewer files than this are prepared in-process
GROUP_FILES = 64                # files journaled, replaced and recorded together
GROUP_SECONDS = 0.5
FLUSH_THREADS = 8               # copies flushed to the disk at once
CHUNK_FILES = 8                 # files handed to a worker process at a time
CHUNK_BYTES = 32 << 20          # ... or fewer, where the files are large
AHEAD_GROUPS = 4                # groups of copies prepared ahead of the one being committed
MAX_HELD_GROUPS = 4             # groups of replaced files waiting to be closed


def values_json(values: list[str]) -> str:
    """``json.dumps(values, ensure_ascii=False)`` for a list of strings, without building an encoder per call.

    The staged values are matched by this text, so it must be exactly what ``json.dumps`` writes.
    """
    return "[" + ", ".join(map(_encode_string, values)) + "]"


_encode_string = json.encoder.encode_basestring  # type: ignore[attr-defined]


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
            [(tid, name, values_json(vals), origin, now)
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
def _preload(library: Library, track_ids: list[int]) -> dict[int, tuple[dict[str, Any], Changes]]:
    """Track rows and their current canonical tags for a whole batch, in a few queries."""
    keys = ("id", "path", "path_key", "size", "mtime_ns", "container", "codec", "status", "error")
    out: dict[int, tuple[dict[str, Any], Changes]] = {}
    with library.lock:
        for start in range(0, len(track_ids), 500):
            chunk = track_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            for row in library.conn.execute(f"SELECT {', '.join(keys)} FROM tracks WHERE id IN ({marks})", chunk):
                track = dict(zip(keys, row, strict=True))
                track["path_key"] = bytes(track["path_key"])
                out[track["id"]] = (track, {})
            for track_id, name, value in library.conn.execute(
                    f"SELECT track_id, field, value FROM track_tags WHERE track_id IN ({marks}) "
                    "AND field IS NOT NULL ORDER BY track_id, position", chunk):
                values = out[track_id][1].setdefault(name, [])
                if value not in values:
                    values.append(value)
    return out


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


def _fail(library: Library, file_id: int, error: str) -> None:
    with library.transaction() as conn:
        conn.execute("UPDATE write_files SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                     (error, utc_now(), file_id))


def _settle_from_disk(library: Library, file_id: int, track_id: int, file_path: str, state: FileState) -> None:
    """Record a file found to hold a write's new tags after an interruption, reading it afresh."""
    record = read_file(file_path, state.size, state.mtime_ns, state.ctime_ns, expect_audio=True)
    now = utc_now()
    with library.transaction() as conn:
        conn.execute("UPDATE write_files SET status = 'written', after_size = ?, after_mtime_ns = ?, "
                     "after_fingerprint = ?, finished_at = ? WHERE id = ?",
                     (state.size, state.mtime_ns, record.fingerprint, now, file_id))
        store_record(conn, track_id, record, now)


def plan(library: Library, changes: dict[int, Changes]) -> BatchSummary:
    """What a write would change, file by file, from the library's view of each file (a dry run)."""
    summary = BatchSummary(None, "dry-run", "completed")
    known = _preload(library, list(changes))
    for track_id, wanted in changes.items():
        track, current = known.get(track_id, (None, {}))
        path = track["path"] if track else f"track {track_id}"
        problem = _usable(track)
        if problem:
            summary.files.append(FileOutcome(track_id, path, "failed", error=problem))
            continue
        diff = _diff(current, wanted)
        summary.files.append(FileOutcome(track_id, path, "planned" if diff else "unchanged", diff))
    return summary


class _Devices:
    """Which folders are on a file system that syncs whole (``atomic.can_sync_file_system``), asked once per
    folder and per device in a batch; a device whose sync failed is not synced whole again."""

    def __init__(self) -> None:
        self._folders: dict[str, int | None] = {}
        self._syncable: dict[int, bool] = {}
        self.failed: set[int] = set()

    def syncing(self, folder: str) -> int | None:
        """The folder's device where one sync flushes it, else None."""
        if folder not in self._folders:
            try:
                device: int | None = os.stat(folder).st_dev
            except OSError:
                device = None
            if device is not None and device not in self._syncable:
                self._syncable[device] = atomic.can_sync_file_system(device)
            self._folders[folder] = device if device is not None and self._syncable[device] else None
        device = self._folders[folder]
        return None if device in self.failed else device


class _Folders:
    """Folders whose renames still need flushing: once per folder, or once per file system that syncs whole."""

    def __init__(self, devices: _Devices) -> None:
        self._devices = devices
        self._pending: set[str] = set()

    def add(self, path: str) -> None:
        self._pending.add(os.path.dirname(os.path.abspath(path)))

    def flush(self) -> None:
        folders, self._pending = self._pending, set()
        whole: dict[int, list[str]] = {}
        for folder in sorted(folders):
            device = self._devices.syncing(folder)
            if device is None:
                atomic.fsync_dir(folder)
            else:
                whole.setdefault(device, []).append(folder)
        for on_device in whole.values():
            try:
                atomic.sync_file_system(on_device[0])
            except (WriteError, OSError):
                for folder in on_device:
                    atomic.fsync_dir(folder)


class _Flusher:
    """Flushes prepared copies to the disk, and puts them in place.

    Where the file system allows it (``atomic.can_sync_file_system``), one sync of the whole file system
    before a group is put in place flushes every copy written so far, in one journal commit; the kernel
    then does a fraction of the work of flushing file by file. Elsewhere each copy is flushed on its own,
    in threads as copies arrive (concurrent flushes are committed together). Every copy is on the disk
    before it may replace its original. A rename over a file would free the old file's blocks, which
    waits on the file system's journal; the old files are held open across their renames and closed in
    the background instead.
    """

    def __init__(self, devices: _Devices) -> None:
        self._devices = devices
        self._pool: ThreadPoolExecutor | None = None
        self._closer: ThreadPoolExecutor | None = None
        self._closing: collections.deque[Future[None]] = collections.deque()
        self._pending: dict[str, Future[dict[str, WriteError]]] = {}   # copy → its flush or its check
        self._unsynced: dict[str, int] = {}                            # copy → device, awaiting a sync

    def start(self, temps: list[str]) -> None:
        per_file = []
        for temp in temps:
            device = self._devices.syncing(os.path.dirname(temp))
            if device is None:
                per_file.append(temp)
            else:
                self._unsynced[temp] = device
        self._submit(per_file, _flush_all)

    def _submit(self, temps: list[str], work: Callable[[list[str]], dict[str, WriteError]]) -> None:
        """Run ``work`` over ``temps`` in threads, a few files each; ``wait`` collects each file's result."""
        if not temps:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(FLUSH_THREADS, thread_name_prefix="jamcaps-flush")
        for start in range(0, len(temps), CHUNK_FILES):
            part = temps[start:start + CHUNK_FILES]
            future = self._pool.submit(work, part)
            for temp in part:
                self._pending[temp] = future

    def sync(self, temps: list[str]) -> None:
        """Sync each file system that ``temps`` wait on; that covers every copy written to it so far.

        Each covered copy is then checked on its own: the kernel reports a write error of a sync once, and
        maybe to another program; the file keeps its own error. Where a sync fails, the copies it covered
        are flushed one by one instead, and so is every later copy on that file system.
        """
        folders = {self._unsynced[temp]: os.path.dirname(temp) for temp in temps if temp in self._unsynced}
        for device, folder in folders.items():
            covered = [temp for temp, on in self._unsynced.items() if on == device]
            for temp in covered:
                del self._unsynced[temp]
            try:
                atomic.sync_file_system(folder)
            except (WriteError, OSError):
                self._devices.failed.add(device)
                self._submit(covered, _flush_all)
            else:
                self._submit(covered, _check_all)

    def wait(self, temp: str) -> None:
        """Return once ``temp`` is on the disk; raise WriteError if it could not be flushed."""
        if temp in self._unsynced:
            self.sync([temp])
        future = self._pending.pop(temp, None)
        error = _flush_all([temp]).get(temp) if future is None else future.result().get(temp)
        if error is not None:
            raise error

    def replace_all(self, copies: list[PreparedCopy | None]) -> list[FileState | BaseException | None]:
        """Put each copy in place of its original once it is flushed: the file's new state, or the error.

        An error other than a WriteError (an interruption) stops the group; it is returned for the copies
        not put in place, for the caller to raise once the files that were replaced are recorded.
        """
        held: list[int] = []
        results: list[FileState | BaseException | None] = []
        interrupted: BaseException | None = None
        self.sync([copy.temp for copy in copies if copy is not None])
        try:
            for copy in copies:
                if copy is None or interrupted is not None:
                    results.append(interrupted if copy is not None else None)
                    continue
                try:
                    results.append(self._replace(copy, held.append))
                except WriteError as exc:
                    results.append(exc)
                except BaseException as exc:
                    interrupted = exc
                    results.append(exc)
        finally:
            self._close_later(held)
        return results

    def _replace(self, copy: PreparedCopy, release: Callable[[int], None]) -> FileState:
        try:
            self.wait(copy.temp)
        except WriteError:
            atomic.discard(copy.temp)
            raise
        return atomic.commit_copy(copy, dir_fsync=False, release=release)

    def _close_later(self, held: list[int]) -> None:
        """Close replaced files in the background: freeing their blocks waits on the file system's journal."""
        if not held:
            return
        if self._closer is None:
            self._closer = ThreadPoolExecutor(1, thread_name_prefix="jamcaps-close")
        while len(self._closing) >= MAX_HELD_GROUPS:  # a bounded number of files held open
            self._closing.popleft().result()
        self._closing.append(self._closer.submit(_close_all, held))

    def close(self) -> None:
        for pool in (self._pool, self._closer):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pending.clear()
        self._unsynced.clear()
        self._closing.clear()


def _close_all(held: list[int]) -> None:
    for descriptor in held:
        with contextlib.suppress(OSError):
            os.close(descriptor)


def _check_all(temps: list[str]) -> dict[str, WriteError]:
    """After a file-system sync: the copies whose data could not be written, with the reason."""
    return _each(temps, lambda temp: atomic.check_flushed(temp))


def _flush_all(temps: list[str]) -> dict[str, WriteError]:
    """Flush each copy; the copies that could not be flushed, with the reason."""
    return _each(temps, lambda temp: atomic.flush_path(temp))


def _each(temps: list[str], step: Callable[[str], None]) -> dict[str, WriteError]:
    errors: dict[str, WriteError] = {}
    for temp in temps:
        try:
            step(temp)
        except WriteError as exc:
            errors[temp] = exc
        except OSError as exc:
            errors[temp] = atomic.os_error(exc, "flushing the copy to disk")
    return errors


def _chunks(tasks: list[FileTask]) -> list[list[FileTask]]:
    """Consecutive tasks in chunks of a few files (one large file makes a chunk of its own)."""
    chunks: list[list[FileTask]] = []
    current: list[FileTask] = []
    size = 0
    for task in tasks:
        task_size = task.expected.size if task.expected else 0
        if current and (len(current) >= CHUNK_FILES or size + task_size > CHUNK_BYTES):
            chunks.append(current)
            current, size = [], 0
        current.append(task)
        size += task_size
    if current:
        chunks.append(current)
    return chunks


def _prepared(tasks: list[FileTask], cancel: CancelToken, workers: int | None) -> Iterator[list[Prepared]]:
    """Prepared copies in the order of ``tasks``, a chunk at a time: in worker processes when there are many.

    Handing a worker several files at once keeps the messages between processes few.
    """
    count = workers if workers is not None else min(4, os.cpu_count() or 1)
    if count <= 1 or len(tasks) < PARALLEL_WRITE_THRESHOLD:
        for task in tasks:
            if cancel.cancelled:
                return
            yield [prepare(task)]
        return
    chunks = _chunks(tasks)
    context = tag_worker_context()  # never a fork of this process: safe beside threads and GUI toolkits
    with ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=init_worker) as pool:
        # workers keep going while groups are committed (a commit can take longer than preparing a group)
        window = max(count * 2, -(-GROUP_FILES * AHEAD_GROUPS // CHUNK_FILES))
        futures = [pool.submit(prepare_chunk, chunk) for chunk in chunks[:window]]
        submitted = len(futures)
        handed_out = 0
        broken = False
        try:
            for index in range(len(chunks)):
                if cancel.cancelled and index >= len(futures):
                    return  # cancelled: nothing more was submitted
                if index >= len(futures):  # the pool broke: the rest is prepared here
                    result = [prepare(task) for task in chunks[index]]
                else:
                    try:
                        result = [Prepared(task, *outcome)
                                  for task, outcome in zip(chunks[index], futures[index].result(), strict=True)]
                    except Exception:
                        # a worker died (or failed) partway through the chunk: remove what it left, do it here
                        broken = True
                        _discard_chunk(chunks[index])
                        result = [prepare(task) for task in chunks[index]]
                handed_out = index + 1
                yield result
                if not broken and submitted < len(chunks) and not cancel.cancelled:
                    futures.append(pool.submit(prepare_chunk, chunks[submitted]))
                    submitted += 1
        finally:
            # copies prepared but never handed out must not stay on disk
            for future in futures[handed_out:]:
                future.cancel()
            for chunk, future in zip(chunks[handed_out:], futures[handed_out:], strict=False):
                if future.cancelled():
                    continue
                try:
                    ready_chunk = future.result()
                except Exception:
                    _discard_chunk(chunk)
                    continue
                for copy, _written, _error in ready_chunk:
                    if copy is not None:
                        atomic.discard(copy.temp)


def _discard_chunk(chunk: list[FileTask]) -> None:
    """Remove the copies a worker may have left for a chunk it did not hand back."""
    for task in chunk:
        atomic.discard_copies_of(task.path)


def _run_tasks(library: Library, batch_id: int, tasks: list[FileTask], *, stage_name: str,
               clear_staged: bool, progress: ProgressCallback, cancel: CancelToken, workers: int | None,
               done_before: int, total: int) -> tuple[list[FileOutcome], bool]:
    """Prepare every task's copy, then journal, replace and settle them a group at a time."""
    outcomes: list[FileOutcome] = []
    devices = _Devices()
    folders = _Folders(devices)
    flusher = _Flusher(devices)
    group: list[Prepared] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        outcomes.extend(_commit_group(library, batch_id, group, clear_staged, folders, flusher))
        group.clear()
        last_flush = time.monotonic()
        progress(Progress(stage_name, done_before + len(outcomes), total, current=outcomes[-1].path if outcomes
                          else None))

    prepared = _prepared(tasks, cancel, workers)
    try:
        for chunk in prepared:
            flusher.start([ready.copy.temp for ready in chunk if ready.copy is not None])
            group.extend(chunk)
            if len(group) >= GROUP_FILES or time.monotonic() - last_flush > GROUP_SECONDS:
                flush()
        if group:
            flush()
    finally:
        prepared.close()
        flusher.close()
        for ready in group:  # interrupted before this group was journaled: nothing was replaced
            if ready.copy is not None:
                atomic.discard(ready.copy.temp)
        folders.flush()
    return outcomes, len(outcomes) == len(tasks)


def _commit_group(library: Library, batch_id: int, group: list[Prepared], clear_staged: bool, folders: _Folders,
                  flusher: _Flusher) -> list[FileOutcome]:
    """Journal a group as pending, replace each original by its copy, then record the outcome."""
    diffs: list[dict[str, tuple[list[str], list[str]]]] = []
    for ready in group:
        old = ready.written.edit.old_values if ready.written else {}
        diffs.append({name: (old.get(name, []), values) for name, values in ready.task.changes.items()})
    with library.transaction() as conn:
        file_ids = _journal(conn, batch_id, group, diffs, utc_now())
    outcomes: list[FileOutcome] = []
    settled: list[tuple[int, Prepared, FileState]] = []
    failures: list[tuple[int, str]] = []
    interrupted: BaseException | None = None
    try:
        results = flusher.replace_all([ready.copy for ready in group])
        for file_id, ready, diff, result in zip(file_ids, group, diffs, results, strict=True):
            task = ready.task
            if ready.copy is None:
                outcomes.append(FileOutcome(task.track_id, task.shown, "failed", diff, error=ready.error))
            elif isinstance(result, WriteError):
                failures.append((file_id, str(result)))
                outcomes.append(FileOutcome(task.track_id, task.shown, "failed", diff, error=str(result)))
            elif isinstance(result, FileState):
                folders.add(task.path)
                settled.append((file_id, ready, result))
                outcomes.append(FileOutcome(task.track_id, task.shown, "written", diff))
            else:  # interrupted: the journal row stays pending, and the next write or undo settles it
                interrupted = interrupted or result
    finally:
        _settle(library, settled, failures, clear_staged)
    if interrupted is not None:
        raise interrupted
    return outcomes


def _clear_staged(conn: Any, cleared: list[tuple[int, Changes]]) -> None:
    """Drop staged values that were written, but not values staged again meanwhile with other values."""
    conn.executemany("DELETE FROM staged_values WHERE track_id = ? AND field = ? AND vals = ?",
                     [(track_id, name, values_json(vals))
                      for track_id, written in cleared for name, vals in written.items()])


def _journal(conn: Any, batch_id: int, group: list[Prepared], diffs: list[dict[str, tuple[list[str], list[str]]]],
             now: str) -> list[int]:
    """Journal rows for a group (``pending`` where a copy waits, ``failed`` where none could be made).

    The rows get the ids SQLite would give them; the transaction holds the write lock, so they are free.
    """
    first = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM write_files").fetchone()[0]
    file_ids = list(range(first, first + len(group)))
    rows, changes = [], []
    for file_id, ready, diff in zip(file_ids, group, diffs, strict=True):
        task, written = ready.task, ready.written
        expected = task.expected
        pending = ready.copy is not None
        rows.append((file_id, batch_id, task.track_id, task.shown, os.fsencode(task.path),
                     "pending" if pending else "failed", ready.error,
                     written.edit.tag_format if written else None,
                     written.backup_json if written else None, task.undoes,
                     expected.size if expected else None, expected.mtime_ns if expected else None,
                     None if pending else now))
        changes += [(file_id, name, values_json(old), values_json(new)) for name, (old, new) in diff.items()]
    conn.executemany(
        "INSERT INTO write_files (id, batch_id, track_id, path, path_key, status, error, tag_format, backup, undoes, "
        "before_size, before_mtime_ns, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.executemany("INSERT INTO write_changes (write_file_id, field, old_values, new_values) VALUES (?, ?, ?, ?)",
                     changes)
    return file_ids


def _settle(library: Library, settled: list[tuple[int, Prepared, FileState]], failures: list[tuple[int, str]],
            clear_staged: bool) -> None:
    """Record replaced files as written (new state, tags re-read from the verified copy) and failures."""
    now = utc_now()
    states: list[WrittenState] = []
    for _file_id, ready, state in settled:
        written = ready.written
        assert written is not None
        states.append(WrittenState(ready.task.track_id, state.size, state.mtime_ns, state.ctime_ns,
                                   written.fingerprint, written.tags.values, written.tags.formats))
    with library.transaction() as conn:
        conn.executemany("UPDATE write_files SET status = 'written', after_size = ?, after_mtime_ns = ?, "
                         "after_fingerprint = ?, finished_at = ? WHERE id = ?",
                         [(state.size, state.mtime_ns, ready.written.fingerprint, now, file_id)
                          for file_id, ready, state in settled if ready.written])
        store_written(conn, states, now)
        if clear_staged:
            _clear_staged(conn, [(ready.task.track_id, ready.task.changes) for _id, ready, _state in settled])
        undone = [ready.task for _id, ready, _state in settled if ready.task.undoes is not None]
        conn.executemany("UPDATE write_files SET status = 'undone' WHERE id = ?", [(task.undoes,) for task in undone])
        # a proposal accepted and written, whose value this undo took back out of the file, is up for
        # review again (unless it was accepted and staged once more since)
        conn.executemany("UPDATE proposals SET status = 'proposed' WHERE track_id = ? AND field = ? "
                         "AND status = 'accepted' AND NOT EXISTS (SELECT 1 FROM staged_values s "
                         "WHERE s.track_id = proposals.track_id AND s.field = proposals.field)",
                         [(task.track_id, name) for task in undone for name in task.changes])
        conn.executemany("UPDATE write_files SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                         [(error, now, file_id) for file_id, error in failures])


def write_changes(library: Library, changes: dict[int, Changes], *, options: WriteOptions | None = None,
                  progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                  clear_staged: bool = True, workers: int | None = None) -> BatchSummary:
    """Write ``changes`` (track id → field → values) into the files, as one journaled batch."""
    options = options or WriteOptions()
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    with library.job_lock("write"):
        recover(library)
        batch_id = _start_batch(library, "write", options)
        known = _preload(library, list(changes))
        tasks: list[FileTask] = []
        early: list[FileOutcome] = []
        unchanged_staged: list[tuple[int, Changes]] = []
        for track_id, wanted in changes.items():
            track, current = known.get(track_id, (None, {}))
            shown = track["path"] if track else f"track {track_id}"
            problem = _usable(track)
            if problem is None:
                try:
                    wanted = {name: normalise(name, vals) for name, vals in wanted.items()}
                except ValueError as exc:
                    problem = str(exc)
            if problem:
                early.append(FileOutcome(track_id, shown, "failed", error=problem))
                continue
            assert track is not None
            diff = _diff(current, wanted)
            if not diff:
                early.append(FileOutcome(track_id, shown, "unchanged"))
                unchanged_staged.append((track_id, wanted))
                continue
            tasks.append(FileTask(track_id, fs_path(track["path_key"]), shown,
                                  FileState(track["size"], track["mtime_ns"]), track["container"], track["codec"],
                                  {name: wanted[name] for name in diff}, id3_version=options.id3_version,
                                  keep_mtime=options.keep_mtime))
        if clear_staged and unchanged_staged:
            with library.transaction() as conn:
                _clear_staged(conn, unchanged_staged)
        return _execute(library, batch_id, "write", early, tasks, clear_staged=clear_staged, progress=progress,
                        cancel=cancel, workers=workers)


def _execute(library: Library, batch_id: int, kind: str, early: list[FileOutcome], tasks: list[FileTask], *,
             clear_staged: bool, progress: ProgressCallback, cancel: CancelToken, workers: int | None) -> BatchSummary:
    """Run a batch's tasks and close its journal entry (``early``: files settled without writing)."""
    summary = BatchSummary(batch_id, kind, "running", list(early))
    total = len(early) + len(tasks)
    progress(Progress(kind, len(early), total))
    try:
        outcomes, finished = _run_tasks(library, batch_id, tasks, stage_name=kind, clear_staged=clear_staged,
                                        progress=progress, cancel=cancel, workers=workers,
                                        done_before=len(early), total=total)
    except BaseException:
        _finish_batch(library, batch_id, "interrupted", summary)
        raise
    summary.files = early + outcomes
    summary.status = "completed" if finished else "cancelled"
    _finish_batch(library, batch_id, summary.status, summary)
    return summary


# -- undo ---------------------------------------------------------------------------------------
class UndoError(Exception):
    """Nothing can be undone (no such batch, or nothing left in it)."""


def last_undoable_batch(library: Library) -> int | None:
    """The latest write batch with files still to undo (undo batches are undone only when named)."""
    row = library.conn.execute(
        "SELECT b.id FROM write_batches b WHERE b.kind = 'write' AND EXISTS (SELECT 1 FROM write_files f "
        "WHERE f.batch_id = b.id AND f.status = 'written') ORDER BY b.id DESC LIMIT 1").fetchone()
    return int(row[0]) if row else None


def undo(library: Library, batch_id: int | None = None, *, progress: ProgressCallback | None = None,
         cancel: CancelToken | None = None, workers: int | None = None) -> BatchSummary:
    """Restore what batch ``batch_id`` (default: the latest with written files) replaced.

    A file changed since that batch wrote it is left alone and reported.
    """
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
            "SELECT id, track_id, path, path_key, backup FROM write_files WHERE batch_id = ? AND status = 'written' "
            "ORDER BY id", (batch_id,)).fetchall()
        if not rows:
            raise UndoError(f"batch {batch_id} has nothing left to undo")
        options = WriteOptions(keep_mtime=bool(json.loads(original[1]).get("keep_mtime")))
        undo_id = _start_batch(library, "undo", options, undo_of=batch_id)
        known = _preload(library, [row[1] for row in rows if row[1] is not None])
        early: list[FileOutcome] = []
        tasks: list[FileTask] = []
        for file_id, track_id, path, key, backup_json in rows:
            track = known.get(track_id, (None, {}))[0]
            changes = {name: (json.loads(new), json.loads(old)) for name, old, new in library.conn.execute(
                "SELECT field, old_values, new_values FROM write_changes WHERE write_file_id = ?", (file_id,))}
            file_path = fs_path(track["path_key"] if track else bytes(key))
            shown = track["path"] if track else path
            problem, state = _undo_problem(file_path, changes, track)
            if problem:
                early.append(FileOutcome(track_id, shown, "failed", changes, error=problem))
                continue
            assert track is not None and state is not None
            tasks.append(FileTask(track_id, file_path, shown, state, track["container"], track["codec"],
                                  {name: old for name, (_new, old) in changes.items()}, backup=json.loads(backup_json),
                                  keep_mtime=options.keep_mtime, undoes=file_id))

        return _execute(library, undo_id, "undo", early, tasks, clear_staged=False, progress=progress,
                        cancel=cancel, workers=workers)


def _undo_problem(file_path: str, changes: dict[str, tuple[list[str], list[str]]],
                  track: dict[str, Any] | None) -> tuple[str | None, FileState | None]:
    """Why a write cannot be undone now (None if it can), and the file's state.

    The file must still hold, in the fields the write set, the values it wrote: a field changed since
    (by another program, or by a later write that was not undone) is left alone.
    """
    if track is None:
        return "the track is no longer in the library", None
    try:
        state = FileState.of(file_path)
    except OSError:
        return "the file is not there any more", None
    record = read_file(file_path, state.size, state.mtime_ns, state.ctime_ns, expect_audio=True)
    if record.status != "ok":
        return f"the file cannot be read now ({record.error})", None
    now: Changes = {}
    for tag in record.tags:
        if tag.field in changes and tag.value not in now.setdefault(tag.field, []):
            now[tag.field].append(tag.value)
    for name, (written, _old) in changes.items():
        if now.get(name, []) != written:
            shown = " ; ".join(now.get(name, [])) or "nothing"
            return f"{name} was changed after this write (it now holds {shown}); the file was left as it is", None
    return None, state


# -- recovery -----------------------------------------------------------------------------------
def recover(library: Library) -> int:
    """Settle what an interrupted write or undo left behind; returns how many files were settled.

    Runs under the job lock, so no other write is in flight. A ``pending`` row's file holds either the
    old or the new values (the rename is atomic); which one is found by reading the file. Batches
    still marked running are closed as interrupted, with their counts, and temporary copies left in
    their folders are removed.
    """
    rows = library.conn.execute(
        "SELECT id, track_id, path, path_key, undoes FROM write_files WHERE status = 'pending'").fetchall()
    for file_id, track_id, path, key, undoes in rows:
        file_path = fs_path(bytes(key))
        changes = {name: json.loads(new) for name, new in library.conn.execute(
            "SELECT field, new_values FROM write_changes WHERE write_file_id = ?", (file_id,))}
        try:
            state = FileState.of(file_path)
        except OSError:
            _fail(library, file_id, "interrupted, and the file is gone")
            continue
        record = read_file(file_path, state.size, state.mtime_ns, state.ctime_ns, expect_audio=True)
        found: Changes = {}
        for tag in record.tags:
            if tag.field in changes and tag.value not in found.setdefault(tag.field, []):
                found[tag.field].append(tag.value)
        if all(found.get(name, []) == vals for name, vals in changes.items()) and track_id is not None:
            _settle_from_disk(library, file_id, track_id, file_path, state)
            if undoes is not None:
                with library.transaction() as conn:
                    conn.execute("UPDATE write_files SET status = 'undone' WHERE id = ?", (undoes,))
            log.info("write of %s was completed before an interruption", path)
        else:
            _fail(library, file_id, "interrupted before the file was replaced; the file was not changed")
    running = [batch_id for (batch_id,) in library.conn.execute(
        "SELECT id FROM write_batches WHERE status = 'running'")]
    for batch_id in running:
        folders = {os.path.dirname(fs_path(bytes(k))) for (k,) in library.conn.execute(
            "SELECT path_key FROM write_files WHERE batch_id = ?", (batch_id,))}
        staged_folders = {os.path.dirname(fs_path(bytes(k))) for (k,) in library.conn.execute(
            "SELECT t.path_key FROM tracks t JOIN staged_values s ON s.track_id = t.id")}
        for folder in folders | staged_folders:
            remove_stale_temp_files(folder)
        with library.transaction() as conn:
            counts = dict(conn.execute("SELECT status, COUNT(*) FROM write_files WHERE batch_id = ? GROUP BY status",
                                       (batch_id,)).fetchall())
            conn.execute("UPDATE write_batches SET status = 'interrupted', finished_at = ?, written = ?, failed = ? "
                         "WHERE id = ?", (utc_now(), counts.get("written", 0) + counts.get("undone", 0),
                                          counts.get("failed", 0), batch_id))
    return len(rows)


def remove_stale_temp_files(folder: str) -> int:
    """Remove the app's temporary copies from a folder (only while no write runs on the library)."""
    removed = 0
    try:
        entries = os.listdir(folder)
    except OSError:
        return 0
    for entry in entries:
        if atomic.is_temp_name(entry):
            try:
                os.unlink(os.path.join(folder, entry))
                removed += 1
            except OSError:
                log.warning("could not remove the temporary file %s", entry)
    return removed


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
