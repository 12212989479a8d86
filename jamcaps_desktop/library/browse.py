"""The library as a browsing view needs it: one row per track with the fields shown in columns, the
pending proposals beside them, and a lower-case text to filter on, read in a few queries (so that
100,000 tracks load in seconds, not minutes)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from jamcaps_desktop.library.database import Library

COLUMN_FIELDS = ("title", "artist", "album", "genre", "mood", "instruments", "bpm", "key", "vocals", "sound", "speed")


@dataclass
class Proposed:
    values: list[str]
    confidence: float
    method: str
    status: str              # proposed or accepted


@dataclass
class TrackRow:
    id: int
    path: str
    status: str              # ok, error or missing
    error: str | None
    duration: float | None
    container: str | None
    tags: dict[str, list[str]] = field(default_factory=dict)
    proposals: dict[str, Proposed] = field(default_factory=dict)
    staged: set[str] = field(default_factory=set)  # fields with values waiting to be written
    caption: str | None = None
    search: str = ""         # path, tag and proposed values and the caption, lower case

    def pending(self) -> int:
        return sum(1 for p in self.proposals.values() if p.status == "proposed")


def _chunks(ids: list[int], size: int = 900) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def browse_rows(library: Library, track_ids: list[int] | None = None) -> list[TrackRow]:
    """Rows for every track (or for ``track_ids``), ordered by path."""
    marks = ", ".join("?" for _ in COLUMN_FIELDS)
    rows: dict[int, TrackRow] = {}
    with library.lock:
        conn = library.conn
        groups = _chunks(track_ids) if track_ids is not None else [None]
        for group in groups:
            where = f" WHERE id IN ({', '.join('?' for _ in group)})" if group else ""
            for track_id, path, status, error, duration, container in conn.execute(
                    f"SELECT id, path, status, error, duration, container FROM tracks{where}", group or []):
                rows[track_id] = TrackRow(track_id, path, status, error, duration, container)
            scope = f" AND track_id IN ({', '.join('?' for _ in group)})" if group else ""
            for track_id, name, value in conn.execute(
                    f"SELECT track_id, field, value FROM track_tags WHERE field IN ({marks}){scope} "
                    "ORDER BY track_id, position", (*COLUMN_FIELDS, *(group or []))):
                row = rows.get(track_id)
                if row is not None:
                    values = row.tags.setdefault(name, [])
                    if value not in values:
                        values.append(value)
            for track_id, name, vals, confidence, method, status in conn.execute(
                    "SELECT track_id, field, vals, confidence, method, status FROM proposals "
                    f"WHERE status IN ('proposed', 'accepted'){scope}", group or []):
                row = rows.get(track_id)
                if row is not None:
                    row.proposals[name] = Proposed(json.loads(vals), float(confidence), method, status)
            for track_id, name in conn.execute(f"SELECT track_id, field FROM staged_values WHERE 1 = 1{scope}",
                                               group or []):
                row = rows.get(track_id)
                if row is not None:
                    row.staged.add(name)
            for track_id, text in conn.execute(f"SELECT track_id, text FROM captions WHERE 1 = 1{scope}",
                                               group or []):
                row = rows.get(track_id)
                if row is not None:
                    row.caption = text
    for row in rows.values():
        words = [row.path, *(v for values in row.tags.values() for v in values),
                 *(v for p in row.proposals.values() for v in p.values)]
        if row.error:
            words.append(row.error)
        if row.caption:
            words.append(row.caption)
        row.search = "\n".join(words).casefold()
    return sorted(rows.values(), key=lambda r: r.path)
