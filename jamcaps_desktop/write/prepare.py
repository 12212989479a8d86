"""The part of a tag write that touches only a temporary copy, so it can run in a worker process.

``prepare`` copies a file beside itself, edits the copy's tags (or restores backed-up ones),
verifies the result and computes the copy's fingerprint; the batch writer flushes the copies to disk,
many at once. It never raises for a
problem with the file: it returns a ``Prepared`` with the plain reason instead. The original is not
touched here; the batch writer replaces it once the journal has recorded the change.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO

from jamcaps_desktop.scan.fingerprint import fingerprint_fileobj
from jamcaps_desktop.tags.adapters import UnsupportedFieldError
from jamcaps_desktop.tags.edit import EditResult, TagEditError, apply_changes, restore_backup, verify_changes
from jamcaps_desktop.tags.read import TagReadResult
from jamcaps_desktop.write.atomic import FileState, PreparedCopy, WriteError, prepare_copy

Changes = dict[str, list[str]]


@dataclass
class FileTask:
    track_id: int
    path: str                        # the file system path
    shown: str                       # the path as the library shows it
    expected: FileState | None       # the file as the library last saw it
    container: str
    codec: str | None
    changes: Changes                 # the values the file must hold afterwards (changed fields only)
    backup: dict[str, Any] | None = None  # for an undo: the raw items to put back
    id3_version: int | None = None
    keep_mtime: bool = False
    undoes: int | None = None        # for an undo: the journal row of the write it reverses


@dataclass
class Written:
    """What an edit of the temporary copy leaves behind for the journal and the library."""

    edit: EditResult
    tags: TagReadResult
    fingerprint: str
    backup_json: str                 # the raw items the change replaces, as the journal stores them


@dataclass
class Prepared:
    task: FileTask
    copy: PreparedCopy | None = None
    written: Written | None = None
    error: str | None = None


def _edit(task: FileTask, handle: BinaryIO) -> Written:
    if task.backup is not None:
        result = restore_backup(handle, task.container, task.codec, task.backup)
    else:
        result = apply_changes(handle, task.container, task.codec, task.changes, id3_version=task.id3_version)
    handle.flush()
    tags = verify_changes(handle, task.container, task.codec, result, task.changes)
    size = handle.seek(0, os.SEEK_END)
    # what the journal needs, without the snapshots used for verification (they can be large)
    slim = EditResult(result.tag_format, result.old_values, {}, Counter(), {}, result.stream,
                      result.converted_id3)
    return Written(slim, tags, fingerprint_fileobj(handle, size), json.dumps(result.backup))


def prepare(task: FileTask) -> Prepared:
    try:
        written, copy = prepare_copy(task.path, lambda handle: _edit(task, handle), expected=task.expected,
                                     keep_mtime=task.keep_mtime, flush=False)
    except (WriteError, TagEditError, UnsupportedFieldError) as exc:
        return Prepared(task, error=str(exc))
    return Prepared(task, copy, written)


Outcome = tuple[PreparedCopy | None, Written | None, str | None]


def prepare_chunk(tasks: list[FileTask]) -> list[Outcome]:
    """Several files in one call (a worker process gets its files a chunk at a time).

    Only what the caller does not have goes back: the copy, what was written, or the error.
    """
    return [(ready.copy, ready.written, ready.error) for ready in map(prepare, tasks)]
