"""Similar tracks: nearest neighbours by sound, by metadata, or both fused.

The fused score is ``w_audio·cos(audio) + w_meta·cos(meta)`` (0.6 / 0.4 by default, as in the
JamendoMaxCaps paper). Each index proposes candidates (several times k), and every candidate is then
scored exactly from the stored vectors. A query track that has only one side (not analysed yet, or no
tags) is matched on that side alone; a candidate that lacks the side the query has counts zero there,
so a fully described neighbour outranks an equally close half-described one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jamcaps_desktop.library.database import Library
from jamcaps_desktop.similar.index import VectorIndex, Vectors, load_vectors

DEFAULT_WEIGHTS = (0.6, 0.4)
CANDIDATES_PER_RESULT = 5


@dataclass(frozen=True)
class Match:
    track_id: int
    score: float
    audio: float | None  # cosine similarity in the audio space, where both tracks have it
    meta: float | None


class Searcher:
    """Synchronises the indexes once, then answers any number of queries."""

    def __init__(self, library: Library, *, by: str = "both", weights: tuple[float, float] = DEFAULT_WEIGHTS) -> None:
        if by not in ("audio", "meta", "both"):
            raise ValueError("by must be audio, meta or both")
        self.library = library
        self.by = by
        self.weights = {"audio": float(weights[0]), "meta": float(weights[1])}
        self.spaces = ["audio", "meta"] if by == "both" else [by]
        self.indexes: dict[str, VectorIndex] = {}
        self.vectors: dict[str, Vectors] = {}
        self.rows: dict[str, dict[int, int]] = {}
        for space in self.spaces:
            index = VectorIndex(library, space)
            index.sync()
            self.indexes[space] = index
            vectors = index.vectors if index.vectors is not None else load_vectors(library, space)
            self.vectors[space] = vectors
            self.rows[space] = {int(t): row for row, t in enumerate(vectors.ids)}

    def vector(self, space: str, track_id: int) -> np.ndarray | None:
        row = self.rows.get(space, {}).get(track_id)
        return None if row is None else self.vectors[space].vectors[row]

    def neighbours(self, track_id: int, k: int = 10, *, query: dict[str, np.ndarray] | None = None,
                   exclude: set[int] | None = None) -> list[Match]:
        """The k tracks most similar to ``track_id`` (or to the given query vectors), best first."""
        query = dict(query) if query is not None else {}
        for space in self.spaces:
            if space not in query:
                vector = self.vector(space, track_id)
                if vector is not None:
                    query[space] = vector
        if not query:
            return []
        excluded = {track_id} | (exclude or set())
        total_weight = sum(self.weights[s] for s in query)
        candidates: set[int] = set()
        for space, vector in query.items():
            wanted = k * CANDIDATES_PER_RESULT + len(excluded)
            candidates.update(t for t, _score in self.indexes[space].search(vector, wanted))
        candidates -= excluded
        matches = []
        for candidate in candidates:
            sims: dict[str, float | None] = {}
            score = 0.0
            for space in self.spaces:
                other = self.vector(space, candidate)
                if space in query and other is not None:
                    sims[space] = float(query[space] @ other)
                    score += self.weights[space] * sims[space]
                else:
                    sims[space] = None
            matches.append(Match(candidate, round(score / total_weight, 5), sims.get("audio"), sims.get("meta")))
        matches.sort(key=lambda m: (-m.score, m.track_id))
        return matches[:k]


def similar_tracks(library: Library, track_id: int, k: int = 10, *, by: str = "both",
                   weights: tuple[float, float] = DEFAULT_WEIGHTS) -> list[Match]:
    return Searcher(library, by=by, weights=weights).neighbours(track_id, k)
