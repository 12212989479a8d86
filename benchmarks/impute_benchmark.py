"""Imputation speed on a large library: metadata embedding, index building and the vote, in tracks/min.

    python benchmarks/impute_benchmark.py [--tracks 10000] [--tsv ../shared/corpus/metadata/mtg-jamendo/...]

Builds a library of ``--tracks`` tracks straight in SQLite (no audio files: the job reads only the
library): each gets the artist, album and tags of an MTG-Jamendo track when a TSV is given (else
generated ones), with genre hidden on every fifth track, and random unit vectors standing in for the
two audio models' embeddings. Then times, as ``jamcaps impute`` runs them: embedding every track's
metadata with the installed text encoder, building the two indexes, and the vote over every track
missing a field. Needs the text encoder installed (`jamcaps models install minilm-l6`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jamcaps_desktop.impute.evaluate import read_tsv
from jamcaps_desktop.impute.job import impute
from jamcaps_desktop.impute.vocabulary import load_vocabulary
from jamcaps_desktop.library import Library
from jamcaps_desktop.library.database import utc_now
from jamcaps_desktop.models.minilm import TextEncoder
from jamcaps_desktop.similar.index import SPACES, VectorIndex
from jamcaps_desktop.similar.metadata import embed_library


def _fill(library: Library, count: int, tsv: Path | None) -> None:
    rng = np.random.default_rng(0)
    vocabulary = load_vocabulary()
    source = read_tsv(tsv, vocabulary) if tsv else []
    genres = list(vocabulary.fields["genre"].values)
    now = utc_now()
    with library.transaction() as conn:
        for track_id in range(1, count + 1):
            path = f"/music/{track_id:06d}.mp3"
            conn.execute("INSERT INTO tracks (id, path_key, path, size, mtime_ns, container, codec, duration, status, "
                         "added_at, updated_at) VALUES (?, ?, ?, 1, 1, 'mp3', 'mp3', 200.0, 'ok', ?, ?)",
                         (track_id, path.encode(), path, now, now))
            if source:
                item = source[(track_id - 1) % len(source)]
                named = {name: [vocabulary.fields[name].name(v) for v in values] for name, values in item.tags.items()}
                tags = {"artist": [item.artist], "album": [item.album], **named}
            else:
                tags = {"artist": [f"Artist {track_id % 700}"], "album": [f"Album {track_id % 2500}"],
                        "genre": [genres[int(rng.integers(len(genres)))]]}
            if track_id % 5 == 0:
                tags.pop("genre", None)
            rows = [(track_id, position, name, name.upper(), value)
                    for position, (name, value) in enumerate((n, v) for n, vs in tags.items() for v in vs)]
            conn.executemany("INSERT INTO track_tags (track_id, position, field, raw_key, value) "
                             "VALUES (?, ?, ?, ?, ?)", rows)
            for model in ("musicnn-msd", "musicnn-mtt"):
                vector = rng.standard_normal(200).astype(np.float32)
                blob = (vector / np.linalg.norm(vector)).tobytes()
                conn.execute("INSERT INTO analyses (track_id, model, model_version, audio_key, status, labels, "
                             "embedding, windows, seconds, device, analysed_at) "
                             "VALUES (?, ?, '0.1.0', 'k', 'ok', '{}', ?, 60, 180.0, 'cpu', ?)",
                             (track_id, model, blob, now))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=10000)
    parser.add_argument("--tsv", type=Path)
    args = parser.parse_args()
    results: dict[str, object] = {"tracks": args.tracks}
    with tempfile.TemporaryDirectory() as tmp, Library(Path(tmp) / "bench.sqlite") as library:
        _fill(library, args.tracks, args.tsv)
        encoder = TextEncoder.installed("minilm-l6", device="cpu")
        start = time.perf_counter()
        embed_library(library, encoder, model="minilm-l6")
        results["embed_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        for space in SPACES:
            VectorIndex(library, space).sync()
        results["index_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        summary = impute(library)
        vote_s = time.perf_counter() - start
        results["vote_s"] = round(vote_s, 1)
        results["vote_tracks"] = summary.tracks
        results["proposals"] = summary.proposals
        total = results["embed_s"] + results["index_s"] + vote_s  # type: ignore[operator]
        results["total_s"] = round(total, 1)
        results["tracks_per_min"] = round(args.tracks / total * 60, 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, CPython {platform.python_version()}"
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
