"""Storing what was read from a file into its track row and tag rows (scanner and writer alike)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from jamcaps_desktop.library.paths import display_path, path_key
from jamcaps_desktop.scan.reader import FileRecord
from jamcaps_desktop.tags.read import TagValue


def record_values(record: FileRecord, now: str, scan_id: int | None = None) -> dict[str, Any]:
    """The ``tracks`` columns for a file record (``scan_id`` only when a scan read it)."""
    stream = record.stream
    values: dict[str, Any] = {
        "path_key": path_key(record.path),
        "path": display_path(record.path),
        "size": record.size,
        "mtime_ns": record.mtime_ns,
        "ctime_ns": record.ctime_ns,
        "fingerprint": record.fingerprint,
        "container": stream.container if stream else record.container,
        "codec": stream.codec if stream else None,
        "duration": stream.duration if stream else None,
        "sample_rate": stream.sample_rate if stream else None,
        "channels": stream.channels if stream else None,
        "bitrate": stream.bitrate if stream else None,
        "bits_per_sample": stream.bits_per_sample if stream else None,
        "tag_formats": json.dumps(record.tag_formats) if record.status == "ok" else None,
        "status": record.status,
        "error": record.error,
        "updated_at": now,
        "missing_since": None,
    }
    if scan_id is not None:
        values["scan_id"] = scan_id
    return values


def insert_track(conn: sqlite3.Connection, values: dict[str, Any], now: str) -> int:
    values = {**values, "added_at": now}
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    cursor = conn.execute(f"INSERT INTO tracks ({names}) VALUES ({marks})", list(values.values()))
    return int(cursor.lastrowid)  # type: ignore[arg-type]


def update_track(conn: sqlite3.Connection, track_id: int, values: dict[str, Any]) -> None:
    assignments = ", ".join(f"{name} = ?" for name in values)
    conn.execute(f"UPDATE tracks SET {assignments} WHERE id = ?", [*values.values(), track_id])


def replace_tags(conn: sqlite3.Connection, track_id: int, record: FileRecord) -> None:
    _replace_tag_rows(conn, track_id, record.tags)


def _replace_tag_rows(conn: sqlite3.Connection, track_id: int, tags: list[TagValue]) -> None:
    conn.execute("DELETE FROM track_tags WHERE track_id = ?", (track_id,))
    conn.executemany(
        "INSERT INTO track_tags (track_id, position, field, raw_key, value) VALUES (?, ?, ?, ?, ?)",
        [(track_id, i, t.field, t.raw_key, t.value) for i, t in enumerate(tags)])


def store_record(conn: sqlite3.Connection, track_id: int, record: FileRecord, now: str,
                 scan_id: int | None = None) -> None:
    """Bring an existing track row and its tags in line with ``record``."""
    update_track(conn, track_id, record_values(record, now, scan_id))
    replace_tags(conn, track_id, record)


@dataclass(frozen=True)
class WrittenState:
    """A file's state and tags after the app wrote it (its audio facts did not change)."""

    track_id: int
    size: int
    mtime_ns: int
    ctime_ns: int | None
    fingerprint: str
    tags: list[TagValue]
    tag_formats: list[str]


def store_written(conn: sqlite3.Connection, states: list[WrittenState], now: str) -> None:
    """Record the new state and tags of files the app just wrote, a few statements for all of them."""
    conn.executemany("UPDATE tracks SET size = ?, mtime_ns = ?, ctime_ns = ?, fingerprint = ?, tag_formats = ?, "
                     "updated_at = ? WHERE id = ?",
                     [(s.size, s.mtime_ns, s.ctime_ns, s.fingerprint, json.dumps(s.tag_formats), now, s.track_id)
                      for s in states])
    conn.executemany("DELETE FROM track_tags WHERE track_id = ?", [(s.track_id,) for s in states])
    conn.executemany(
        "INSERT INTO track_tags (track_id, position, field, raw_key, value) VALUES (?, ?, ?, ?, ?)",
        [(s.track_id, i, t.field, t.raw_key, t.value) for s in states for i, t in enumerate(s.tags)])
