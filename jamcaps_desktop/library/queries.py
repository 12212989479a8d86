"""Read-only questions asked of the library by the CLI and the GUI."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from jamcaps_desktop.library.database import Library
from jamcaps_desktop.library.paths import key_range, path_key, real_path
from jamcaps_desktop.tags.fields import FIELDS

FORMAT_ALIASES = {
    "m4a": "mp4", "m4b": "mp4", "aac": "aac", "alac": "alac", "wma": "asf", "wv": "wavpack", "mpc": "musepack",
    "aif": "aiff", "aifc": "aiff", "oga": "ogg", "ofr": "optimfrog", "mp2": "mp2",
}

TRACK_COLUMNS = ("id", "path", "size", "mtime_ns", "fingerprint", "container", "codec", "duration", "sample_rate",
                 "channels", "bitrate", "bits_per_sample", "tag_formats", "status", "error", "added_at",
                 "updated_at", "missing_since", "scan_id")


@dataclass
class TrackFilter:
    missing: list[str] = field(default_factory=list)   # canonical fields the track lacks
    formats: list[str] = field(default_factory=list)   # container or codec names (aliases allowed)
    statuses: list[str] = field(default_factory=list)  # ok / error / missing
    under: str | None = None                           # only tracks inside this folder
    tag_equals: list[tuple[str, str]] = field(default_factory=list)  # (field, value), case-insensitive
    text: list[str] = field(default_factory=list)      # words found in the path or any tag value
    proposed: list[str] = field(default_factory=list)  # fields with a pending proposal ("any": any field)
    limit: int | None = None


class UnknownFieldError(ValueError):
    pass


def _where(flt: TrackFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for name in flt.missing:
        if name not in FIELDS:
            raise UnknownFieldError(f"unknown field {name!r}; known fields: {', '.join(FIELDS)}")
        clauses.append("t.status = 'ok' AND NOT EXISTS "
                       "(SELECT 1 FROM track_tags g WHERE g.track_id = t.id AND g.field = ?)")
        params.append(name)
    if flt.formats:
        names = [FORMAT_ALIASES.get(f.lower().lstrip("."), f.lower().lstrip(".")) for f in flt.formats]
        marks = ", ".join("?" for _ in names)
        clauses.append(f"(t.container IN ({marks}) OR t.codec IN ({marks}))")
        params += names + names
    if flt.statuses:
        marks = ", ".join("?" for _ in flt.statuses)
        clauses.append(f"t.status IN ({marks})")
        params += flt.statuses
    if flt.under:
        low, high = key_range(path_key(real_path(flt.under)))
        clauses.append("t.path_key >= ? AND t.path_key < ?")
        params += [low, high]
    for name, value in flt.tag_equals:
        if name not in FIELDS:
            raise UnknownFieldError(f"unknown field {name!r}; known fields: {', '.join(FIELDS)}")
        clauses.append("EXISTS (SELECT 1 FROM track_tags g WHERE g.track_id = t.id AND g.field = ? "
                       "AND g.value = ? COLLATE NOCASE)")
        params += [name, value]
    for name in flt.proposed:
        if name != "any" and name not in FIELDS:
            raise UnknownFieldError(f"unknown field {name!r}; known fields: {', '.join(FIELDS)}")
        clauses.append("EXISTS (SELECT 1 FROM proposals p WHERE p.track_id = t.id AND p.status = 'proposed'"
                       + (" AND p.field = ?)" if name != "any" else ")"))
        params += [name] if name != "any" else []
    for word in flt.text:
        clauses.append("(t.path LIKE ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM track_tags g WHERE g.track_id = t.id "
                       "AND g.field IS NOT NULL AND g.value LIKE ? ESCAPE '\\'))")
        pattern = "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        params += [pattern, pattern]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def list_tracks(library: Library, flt: TrackFilter | None = None) -> list[dict[str, Any]]:
    """Tracks with their title, artist, album and genres, ordered by path."""
    flt = flt or TrackFilter()
    where, params = _where(flt)
    limit = f" LIMIT {int(flt.limit)}" if flt.limit else ""
    sql = (
        "SELECT t.id, t.path, t.container, t.codec, t.duration, t.status, t.error, "
        "(SELECT value FROM track_tags x WHERE x.track_id = t.id AND x.field = 'title' ORDER BY position LIMIT 1)"
        " AS title, "
        "(SELECT value FROM track_tags x WHERE x.track_id = t.id AND x.field = 'artist' ORDER BY position LIMIT 1)"
        " AS artist, "
        "(SELECT value FROM track_tags x WHERE x.track_id = t.id AND x.field = 'album' ORDER BY position LIMIT 1)"
        " AS album, "
        "(SELECT json_group_array(value) FROM track_tags x WHERE x.track_id = t.id AND x.field = 'genre')"
        " AS genre "
        f"FROM tracks t{where} ORDER BY t.path{limit}"
    )
    rows = list(library.db.query(sql, params))
    for row in rows:
        row["genre"] = json.loads(row["genre"]) if row["genre"] else []
    return rows


def find_track(library: Library, path_or_id: str) -> dict[str, Any] | None:
    """A track by numeric id or by path (absolute or relative to the current folder)."""
    row = None
    if path_or_id.isdigit():
        row = library.conn.execute(f"SELECT {', '.join(TRACK_COLUMNS)} FROM tracks WHERE id = ?",
                                   (int(path_or_id),)).fetchone()
    if row is None:
        # as given (a link followed into the library keeps its own path), then with links resolved
        for candidate in dict.fromkeys((os.path.abspath(path_or_id), real_path(path_or_id))):
            row = library.conn.execute(f"SELECT {', '.join(TRACK_COLUMNS)} FROM tracks WHERE path_key = ?",
                                       (path_key(candidate),)).fetchone()
            if row is not None:
                break
    if row is None:
        return None
    track = dict(zip(TRACK_COLUMNS, row, strict=True))
    track["tag_formats"] = json.loads(track["tag_formats"]) if track["tag_formats"] else []
    return track


def track_tags(library: Library, track_id: int) -> list[dict[str, Any]]:
    return list(library.db.query(
        "SELECT field, raw_key, value FROM track_tags WHERE track_id = ? ORDER BY position", [track_id]))


def canonical_tags(tags: list[dict[str, Any]]) -> dict[str, list[str]]:
    """field → values, in the order of FIELDS; raw-only keys are left out."""
    out: dict[str, list[str]] = {}
    for name in FIELDS:
        values = [t["value"] for t in tags if t["field"] == name]
        if values:
            out[name] = list(dict.fromkeys(values))  # the same value under two keys counts once
    return out


def library_stats(library: Library) -> dict[str, Any]:
    conn = library.conn
    by_status = dict(conn.execute("SELECT status, COUNT(*) FROM tracks GROUP BY status").fetchall())
    total = sum(by_status.values())
    duration, size = conn.execute(
        "SELECT COALESCE(SUM(duration), 0), COALESCE(SUM(size), 0) FROM tracks WHERE status = 'ok'").fetchone()
    by_format = [
        {"container": c, "codec": k, "tracks": n}
        for c, k, n in conn.execute(
            "SELECT container, codec, COUNT(*) FROM tracks WHERE status = 'ok' "
            "GROUP BY container, codec ORDER BY COUNT(*) DESC, container").fetchall()
    ]
    ok = by_status.get("ok", 0)
    coverage = {}
    counts = dict(conn.execute(
        "SELECT g.field, COUNT(DISTINCT g.track_id) FROM track_tags g JOIN tracks t ON t.id = g.track_id "
        "WHERE t.status = 'ok' AND g.field IS NOT NULL GROUP BY g.field").fetchall())
    for name in ("title", "artist", "album", "genre", "mood", "instruments", "bpm", "key", "date", "language"):
        have = counts.get(name, 0)
        coverage[name] = {"tracks": have, "percent": round(100.0 * have / ok, 1) if ok else 0.0}
    last = conn.execute(
        "SELECT id, started_at, finished_at, status, files_seen, added, updated, unchanged, moved, missing, "
        "errors, ignored FROM scans ORDER BY id DESC LIMIT 1").fetchone()
    last_scan = None
    if last:
        keys = ("id", "started_at", "finished_at", "status", "files_seen", "added", "updated", "unchanged",
                "moved", "missing", "errors", "ignored")
        last_scan = dict(zip(keys, last, strict=True))
    return {
        "library": str(library.path),
        "schema_version": library.schema_version,
        "tracks": total,
        "ok": ok,
        "errors": by_status.get("error", 0),
        "missing": by_status.get("missing", 0),
        "duration_s": round(float(duration), 1),
        "size_bytes": int(size),
        "formats": by_format,
        "field_coverage": coverage,
        "last_scan": last_scan,
    }


def parse_query(query: str) -> TrackFilter:
    """A filter from words such as ``missing:genre format:flac artist:"Some One" piano``.

    ``missing:FIELD``, ``proposed:FIELD`` (or ``proposed:any``), ``format:FMT``, ``status:ok|error|missing``,
    ``under:FOLDER`` and ``FIELD:VALUE`` (exact, ignoring case) narrow the selection; other words must
    appear in the path or a tag value.
    """
    import shlex

    flt = TrackFilter()
    try:
        words = shlex.split(query)
    except ValueError as exc:
        raise UnknownFieldError(f"cannot read the query {query!r}: {exc}") from exc
    for word in words:
        key, sep, value = word.partition(":")
        key = key.lower()
        if not sep or not value:
            flt.text.append(word)
        elif key == "missing":
            flt.missing.append(value)
        elif key == "format":
            flt.formats.append(value)
        elif key == "status":
            flt.statuses.append(value)
        elif key == "under":
            flt.under = value
        elif key == "proposed":
            flt.proposed.append(value)
        elif key in FIELDS:
            flt.tag_equals.append((key, value))
        else:
            flt.text.append(word)
    return flt


def resolve_targets(library: Library, target: str) -> list[int]:
    """Track ids for a track id, a file or folder path, or a query (see ``parse_query``)."""
    if target.isdigit():
        row = library.conn.execute("SELECT id FROM tracks WHERE id = ?", (int(target),)).fetchone()
        if row:
            return [int(row[0])]
    if os.path.isdir(target):
        return [r["id"] for r in list_tracks(library, TrackFilter(under=target))]
    if os.path.lexists(target):
        track = find_track(library, target)
        return [int(track["id"])] if track else []
    return [r["id"] for r in list_tracks(library, parse_query(target))]
