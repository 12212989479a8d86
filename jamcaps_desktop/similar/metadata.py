"""The metadata text a track is embedded by, and the job that embeds the library's tracks.

The text lists the descriptive fields a track has, in a fixed order, as "field: value, value" parts
("artist: Nina Simone | album: Pastel Blues | genre: jazz, soul | instruments: piano"). Identifiers,
numbers the text encoder reads poorly (BPM, track numbers) and free text that would drown the rest
(lyrics, long comments) are left out. A track is re-embedded when this text changes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.library.database import Library, utc_now

log = logging.getLogger(__name__)

TEXT_FIELDS = ("title", "artist", "albumartist", "album", "composer", "date", "genre", "mood", "instruments",
               "language", "description")
MAX_VALUE_CHARS = 200
TEXT_MODEL = "minilm-l6"  # the metadata encoder the app uses
BATCH = 64


def metadata_text(tags: dict[str, list[str]], *, leave_out: Iterable[str] = ()) -> str:
    """The text embedded for a track with ``tags`` (canonical field -> values), without ``leave_out``."""
    skipped = set(leave_out)
    parts = []
    for name in TEXT_FIELDS:
        if name in skipped:
            continue
        values = [v.strip()[:MAX_VALUE_CHARS] for v in tags.get(name, []) if v and v.strip()]
        if name == "date":
            values = [v[:4] for v in values]
        if values:
            parts.append(f"{name}: {', '.join(dict.fromkeys(values))}")
    return " | ".join(parts)


def library_tags(library: Library) -> dict[int, dict[str, list[str]]]:
    """Every usable track's canonical tags (field -> distinct values, in file order), in one query."""
    out: dict[int, dict[str, list[str]]] = {}
    for track_id, name, value in library.conn.execute(
            "SELECT g.track_id, g.field, g.value FROM track_tags g JOIN tracks t ON t.id = g.track_id "
            "WHERE t.status = 'ok' AND g.field IS NOT NULL ORDER BY g.track_id, g.position"):
        values = out.setdefault(track_id, {}).setdefault(name, [])
        if value not in values:
            values.append(value)
    return out


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed_library(library: Library, encoder: Any, *, model: str, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> dict[str, int]:
    """Embed the metadata of every track whose text changed since it was last embedded."""
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    stored = dict(library.conn.execute("SELECT track_id, text_hash FROM text_embeddings WHERE model = ?",
                                       (model,)).fetchall())
    todo: list[tuple[int, str, str]] = []
    empty: list[int] = []
    unchanged = 0
    tags = library_tags(library)
    for (track_id,) in library.conn.execute("SELECT id FROM tracks WHERE status = 'ok' ORDER BY id").fetchall():
        text = metadata_text(tags.get(track_id, {}))
        if not text:
            empty.append(track_id)
            continue
        digest = text_hash(text)
        if stored.get(track_id) == digest:
            unchanged += 1
        else:
            todo.append((track_id, text, digest))
    with library.transaction() as conn:  # a track whose tags were all removed has nothing to be found by
        conn.executemany("DELETE FROM text_embeddings WHERE track_id = ?", [(t,) for t in empty])
    progress(Progress("embed", 0, len(todo)))
    done = 0
    for start in range(0, len(todo), BATCH):
        if cancel.cancelled:
            break
        batch = todo[start:start + BATCH]
        vectors = np.asarray(encoder.encode([text for _t, text, _d in batch]), dtype=np.float32)
        now = utc_now()
        with library.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO text_embeddings (track_id, model, text_hash, embedding, embedded_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [(t, model, d, v.tobytes(), now) for (t, _text, d), v in zip(batch, vectors, strict=True)])
        done += len(batch)
        progress(Progress("embed", done, len(todo)))
    return {"embedded": done, "unchanged": unchanged, "without_tags": len(empty)}


def embed_with_installed_encoder(library: Library, device: str = "auto", *, progress: ProgressCallback | None = None,
                                 cancel: CancelToken | None = None) -> bool:
    """Embed the tracks' metadata with the installed text encoder; False when it is not installed (then
    similarity uses the audio alone). Raises ``registry.ModelError`` for a damaged installation."""
    from jamcaps_desktop.models import registry

    if not registry.is_installed(TEXT_MODEL):
        return False
    from jamcaps_desktop.models.minilm import TextEncoder

    encoder = TextEncoder.installed(TEXT_MODEL, device=device)
    embed_library(library, encoder, model=TEXT_MODEL, progress=progress, cancel=cancel)
    return True
