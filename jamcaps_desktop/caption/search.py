"""Full-text search over captions, tags and paths (SQLite FTS5), ranked by BM25.

The index is a derived table, rebuilt whenever the library changed since it was built (tracks
scanned or rewritten, captions written); a search therefore always sees the library as it is. Keys
are indexed in words ("F♯ minor"), so "minor key" finds minor-key tracks.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from jamcaps_desktop.caption.evidence import KEY_FLOOR, describe_key
from jamcaps_desktop.library.database import Library

TABLE = "track_search"
STOP_WORDS = {"a", "an", "and", "the", "in", "on", "of", "with", "for", "to", "some", "music", "track", "tracks",
              "song", "songs", "piece", "key", "by", "that", "is", "are", "something", "sounds", "like"}
WEIGHTS = (3.0, 1.5, 0.5)  # caption, tags, path


class SearchUnavailable(RuntimeError):
    """This SQLite has no FTS5."""


@dataclass
class Hit:
    track_id: int
    score: float        # higher is better
    path: str
    caption: str | None


def _ensure(conn: sqlite3.Connection) -> None:
    try:
        conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(caption, tags, path, "
                     "tokenize = 'unicode61 remove_diacritics 2')")
    except sqlite3.OperationalError as exc:
        raise SearchUnavailable(f"this SQLite has no full-text search (FTS5): {exc}") from exc


def _stamp(library: Library) -> str:
    # tag rows are replaced, never edited in place, so new row ids show every change (timestamps have
    # whole seconds only; caption texts are summed by length too)
    tracks = library.conn.execute("SELECT COUNT(*), MAX(updated_at) FROM tracks").fetchone()
    tags = library.conn.execute("SELECT COUNT(*), MAX(rowid) FROM track_tags").fetchone()
    captions = library.conn.execute("SELECT COUNT(*), MAX(created_at), SUM(length(text)) FROM captions").fetchone()
    features = library.conn.execute("SELECT COUNT(*), MAX(measured_at) FROM track_features").fetchone()
    return "|".join(str(v) for v in (*tracks, *tags, *captions, *features))


def refresh_search_index(library: Library, *, force: bool = False) -> bool:
    """Rebuild the index if the library changed since it was built; True when it was rebuilt."""
    stamp = _stamp(library)
    with library.transaction() as conn:
        _ensure(conn)
        row = conn.execute("SELECT stamp FROM search_state WHERE id = 1").fetchone()
        if row is not None and row[0] == stamp and not force:
            return False
        tags: dict[int, list[str]] = {}
        for track_id, name, value in conn.execute(
                "SELECT track_id, field, value FROM track_tags WHERE field IS NOT NULL ORDER BY track_id, position"):
            words = tags.setdefault(track_id, [])
            words.append(describe_key(value) if name == "key" and value[:1].isalpha() and len(value) <= 3 else value)
        for track_id, key, confidence in conn.execute("SELECT track_id, key, key_confidence FROM track_features "
                                                      "WHERE key IS NOT NULL"):
            if (confidence or 0) >= KEY_FLOOR:
                tags.setdefault(track_id, []).append(describe_key(key))
        captions = dict(conn.execute("SELECT track_id, text FROM captions"))
        for track_id, text in conn.execute("SELECT track_id, group_concat(text, ' ') FROM caption_chunks "
                                           "GROUP BY track_id"):
            captions[track_id] = f"{captions.get(track_id, '')} {text}"
        conn.execute(f"DELETE FROM {TABLE}")
        conn.executemany(f"INSERT INTO {TABLE} (rowid, caption, tags, path) VALUES (?, ?, ?, ?)",
                         [(track_id, captions.get(track_id, ""), " ; ".join(tags.get(track_id, [])), path)
                          for track_id, path in conn.execute("SELECT id, path FROM tracks WHERE status != 'missing'")])
        conn.execute("INSERT INTO search_state (id, stamp) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET "
                     "stamp = excluded.stamp", (stamp,))
    return True


def query_terms(text: str) -> list[str]:
    words = [w for w in re.findall(r"\w+", text.casefold()) if w not in STOP_WORDS]
    return list(dict.fromkeys(words))


def search(library: Library, text: str, limit: int = 20) -> list[Hit]:
    """Tracks matching ``text`` (any of its words; more words and rarer ones rank higher)."""
    terms = query_terms(text)
    if not terms:
        return []
    refresh_search_index(library)
    expression = " OR ".join(f'"{term}"*' for term in terms)
    rows = library.conn.execute(
        f"SELECT s.rowid, bm25({TABLE}, ?, ?, ?) AS rank, t.path, c.text FROM {TABLE} s "
        "JOIN tracks t ON t.id = s.rowid LEFT JOIN captions c ON c.track_id = s.rowid "
        f"WHERE {TABLE} MATCH ? ORDER BY rank LIMIT ?", (*WEIGHTS, expression, limit)).fetchall()
    return [Hit(int(r[0]), round(-float(r[1]), 4), r[2], r[3]) for r in rows]
