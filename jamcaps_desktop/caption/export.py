"""The library as a dataset in the shape of JamendoMaxCaps: one record per track with its captions
(with chunk times), its original metadata, and the imputed metadata with confidence and provenance.
JSON Lines always; Parquet too where pyarrow is installed."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jamcaps_desktop.library.database import Library
from jamcaps_desktop.library.queries import canonical_tags, track_tags


def records(library: Library) -> Iterator[dict[str, Any]]:
    rows = library.conn.execute("SELECT id, path, duration FROM tracks WHERE status = 'ok' ORDER BY id").fetchall()
    for track_id, path, duration in rows:
        captions = [{"start_s": 0.0, "end_s": duration, "text": text, "model": model, "scope": "track"}
                    for text, model in library.conn.execute("SELECT text, model FROM captions WHERE track_id = ?",
                                                            (track_id,))]
        captions += [{"start_s": s, "end_s": e, "text": text, "model": model, "scope": "chunk"}
                     for s, e, text, model in library.conn.execute(
                         "SELECT start_s, end_s, text, model FROM caption_chunks WHERE track_id = ? ORDER BY start_s",
                         (track_id,))]
        imputed = {name: {"values": json.loads(vals), "confidence": confidence, "method": method, "status": status,
                          "neighbours": [[n[0], n[1]] for n in json.loads(neighbours)], "models": json.loads(models)}
                   for name, vals, confidence, method, status, neighbours, models in library.conn.execute(
                       "SELECT field, vals, confidence, method, status, neighbours, models FROM proposals "
                       "WHERE track_id = ? AND status != 'rejected' ORDER BY field", (track_id,))}
        features = library.conn.execute("SELECT bpm, bpm_confidence, key, key_confidence, loudness_lufs FROM "
                                        "track_features WHERE track_id = ?", (track_id,)).fetchone()
        yield {"id": track_id, "path": path, "duration": duration, "captions": captions,
               "metadata": canonical_tags(track_tags(library, track_id)), "imputed": imputed,
               "analysis": dict(zip(("bpm", "bpm_confidence", "key", "key_confidence", "loudness_lufs"), features,
                                    strict=True)) if features else {}}


def export_jsonl(library: Library, target: str | os.PathLike[str]) -> int:
    """Write every track as one JSON line (atomically: a temporary file renamed into place)."""
    target = Path(target)
    temp = target.with_name(f".{target.name}.tmp")
    count = 0
    with open(temp, "w", encoding="utf-8") as out:
        for record in records(library):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    os.replace(temp, target)
    return count


def export_parquet(library: Library, target: str | os.PathLike[str]) -> int:
    """The same records as Parquet (nested fields as JSON text); needs pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RuntimeError("Parquet export needs pyarrow (pip install pyarrow)") from exc
    rows = [{**r, "captions": json.dumps(r["captions"], ensure_ascii=False),
             "metadata": json.dumps(r["metadata"], ensure_ascii=False),
             "imputed": json.dumps(r["imputed"], ensure_ascii=False),
             "analysis": json.dumps(r["analysis"], ensure_ascii=False)} for r in records(library)]
    pq.write_table(pa.Table.from_pylist(rows), str(target))
    return len(rows)
