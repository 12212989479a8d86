"""Persistent vector indexes (USearch, cosine, float16) beside the library, kept in step with it.

Two spaces: ``audio`` (each track's audio-model embeddings, concatenated) and ``meta`` (the text
embedding of its metadata). Each lives in a file next to the library (``library.audio.usearch``); keys
are track ids. The table ``index_entries`` records what each file holds and what every vector was made
from (a stamp), so ``sync`` only adds what is new or changed and removes what is gone. The file is
written to a temporary name and renamed, then the table is updated; if the two ever disagree (a crash
between them, a file deleted by hand), the index is rebuilt from the library, which always holds the
vectors themselves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jamcaps_desktop.library.database import Library

log = logging.getLogger(__name__)

SPACES = ("audio", "meta")


def usearch_index_class() -> Any:
    """USearch's Index class, imported after ONNX Runtime: some USearch builds (2.26.2 and newer) make a
    later ``import onnxruntime`` crash the process, and the app loads models after searching."""
    import onnxruntime  # noqa: F401 - loaded first on purpose
    from usearch.index import Index

    return Index


@dataclass
class Vectors:
    ids: np.ndarray  # uint64 track ids
    vectors: np.ndarray  # float32 [n, dims], unit length
    stamps: list[str]


def audio_models(library: Library) -> list[str]:
    """The audio models whose embeddings make up the audio space: every model with stored embeddings."""
    return [m for (m,) in library.conn.execute(
        "SELECT DISTINCT model FROM analyses WHERE status = 'ok' AND embedding IS NOT NULL ORDER BY model")]


def load_vectors(library: Library, space: str, track_ids: list[int] | None = None) -> Vectors:
    """The vectors of ``space`` from the library (all tracks, or those of ``track_ids``)."""
    wanted = set(track_ids) if track_ids is not None else None
    ids: list[int] = []
    rows: list[np.ndarray] = []
    stamps: list[str] = []
    if space == "audio":
        models = audio_models(library)
        parts: dict[int, dict[str, tuple[bytes, str]]] = {}
        for track_id, model, blob, analysed_at in library.conn.execute(
                "SELECT a.track_id, a.model, a.embedding, a.analysed_at FROM analyses a JOIN tracks t "
                "ON t.id = a.track_id WHERE a.status = 'ok' AND a.embedding IS NOT NULL AND t.status = 'ok'"):
            if wanted is None or track_id in wanted:
                parts.setdefault(track_id, {})[model] = (blob, analysed_at)
        for track_id in sorted(parts):
            have = parts[track_id]
            if not models or any(m not in have for m in models):
                continue  # a track analysed by only some of the models is left out until it has them all
            vector = np.concatenate([np.frombuffer(have[m][0], dtype=np.float32) for m in models])
            ids.append(track_id)
            rows.append(vector / max(float(np.linalg.norm(vector)), 1e-12))
            stamps.append("|".join(have[m][1] for m in models))
    elif space == "meta":
        # one text encoder at a time: the one that embedded most tracks (a switch mid-way leaves the rest)
        current = library.conn.execute("SELECT model FROM text_embeddings GROUP BY model ORDER BY count(*) DESC, "
                                       "max(embedded_at) DESC LIMIT 1").fetchone()
        for track_id, blob, text_hash in library.conn.execute(
                "SELECT e.track_id, e.embedding, e.text_hash FROM text_embeddings e JOIN tracks t ON t.id = e.track_id "
                "WHERE t.status = 'ok' AND e.model = ? ORDER BY e.track_id", (current[0] if current else "",)):
            if wanted is None or track_id in wanted:
                ids.append(track_id)
                rows.append(np.frombuffer(blob, dtype=np.float32))
                stamps.append(f"{current[0]}|{text_hash}")
    else:
        raise ValueError(f"unknown space {space!r}")
    if not rows:
        return Vectors(np.zeros(0, dtype=np.uint64), np.zeros((0, 0), dtype=np.float32), [])
    return Vectors(np.array(ids, dtype=np.uint64), np.stack(rows).astype(np.float32), stamps)


def index_path(library: Library, space: str) -> Path:
    return library.path.with_name(f"{library.path.stem}.{space}.usearch")


class VectorIndex:
    """One space's USearch index, synchronised with the library before use."""

    def __init__(self, library: Library, space: str) -> None:
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r}")
        self.library = library
        self.space = space
        self.path = index_path(library, space)
        self.index = None  # usearch.index.Index, or None while the space is empty
        self.vectors: Vectors | None = None  # what the last sync read from the library

    def _entries(self) -> dict[int, str]:
        return dict(self.library.conn.execute("SELECT track_id, stamp FROM index_entries WHERE space = ?",
                                              (self.space,)).fetchall())

    def _open(self, dims: int):  # -> usearch.index.Index | None
        Index = usearch_index_class()

        entries = self._entries()
        if self.path.is_file() and entries:
            try:
                index = Index.restore(str(self.path))
            except Exception as exc:  # a damaged or foreign file: rebuilt from the library
                log.warning("the %s index %s cannot be read (%s); rebuilding it", self.space, self.path, exc)
                index = None
            if index is not None and index.ndim == dims and len(index) == len(entries):
                return index
            log.info("the %s index disagrees with the library; rebuilding it", self.space)
        return None

    def sync(self) -> dict[str, int]:
        """Bring the index file in line with the library; returns how many vectors were added and removed."""
        Index = usearch_index_class()

        vectors = self.vectors = load_vectors(self.library, self.space)
        if not len(vectors.ids):
            self.index = None
            self._save(None, {})
            return {"added": 0, "removed": 0, "size": 0}
        dims = vectors.vectors.shape[1]
        index = self._open(dims)
        entries = self._entries() if index is not None else {}
        if index is None:
            index = Index(ndim=dims, metric="cos", dtype="f16")
        desired = {int(i): s for i, s in zip(vectors.ids, vectors.stamps, strict=True)}
        gone = [track_id for track_id in entries if track_id not in desired]
        changed = [track_id for track_id, stamp in desired.items() if entries.get(track_id) != stamp]
        stale = [t for t in gone + changed if index.contains(t)]
        if stale:
            index.remove(np.array(stale, dtype=np.uint64))
        if changed:
            position = {int(track_id): row for row, track_id in enumerate(vectors.ids)}
            rows = [position[t] for t in changed]
            index.add(np.array(changed, dtype=np.uint64), vectors.vectors[rows])
        if gone or changed or not self.path.is_file():
            self._save(index, desired)
        self.index = index
        return {"added": len(changed), "removed": len(gone), "size": len(index)}

    def _save(self, index: Any, desired: dict[int, str]) -> None:  # index: a usearch Index, or None
        if index is None:
            self.path.unlink(missing_ok=True)
        else:
            temporary = self.path.with_name(self.path.name + ".tmp")
            index.save(str(temporary))
            os.replace(temporary, self.path)
        with self.library.transaction() as conn:
            conn.execute("DELETE FROM index_entries WHERE space = ?", (self.space,))
            conn.executemany("INSERT INTO index_entries (space, track_id, stamp) VALUES (?, ?, ?)",
                             [(self.space, t, s) for t, s in desired.items()])

    def rebuild(self) -> dict[str, int]:
        self.path.unlink(missing_ok=True)
        with self.library.transaction() as conn:
            conn.execute("DELETE FROM index_entries WHERE space = ?", (self.space,))
        return self.sync()

    def search(self, vector: np.ndarray, count: int) -> list[tuple[int, float]]:
        """The ``count`` nearest tracks as (track id, cosine similarity), best first."""
        if self.index is None or count <= 0:
            return []
        matches = self.index.search(np.asarray(vector, dtype=np.float32), min(count, len(self.index)))
        return [(int(key), float(1.0 - distance)) for key, distance in zip(matches.keys, matches.distances, strict=True)
                if np.isfinite(distance)]  # a single query's matches hold only what was found; guard anyway
