"""The caption job: a caption for every track that has none (or whose evidence changed), stored in the
library and in the search index. Resumable: a track whose caption was written from the same evidence
by the same writer is skipped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from jamcaps_desktop.caption.evidence import track_evidence
from jamcaps_desktop.caption.search import refresh_search_index
from jamcaps_desktop.caption.writers import llm_caption, template_caption
from jamcaps_desktop.impute.vocabulary import load_vocabulary
from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.library.database import Library, utc_now

WRITERS = ("template", "llm")


@dataclass
class CaptionSummary:
    status: str
    writer: str
    tracks: int = 0
    written: int = 0
    unchanged: int = 0
    without_evidence: int = 0
    fell_back: int = 0                     # llm captions replaced by the template's (ungrounded or unusable)
    reasons: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def caption(library: Library, *, writer: str = "template", complete: Any = None, model_name: str | None = None,
            overwrite: bool = False, track_ids: list[int] | None = None, progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None) -> CaptionSummary:
    """Write captions with ``writer`` ('template', or 'llm' with ``complete``, a language model)."""
    if writer not in WRITERS:
        raise ValueError(f"no caption writer {writer!r} (available: {', '.join(WRITERS)})")
    if writer == "llm" and complete is None:
        raise ValueError("the llm caption writer needs a language model")
    progress, cancel = progress or no_progress, cancel or CancelToken()
    started = time.monotonic()
    label = writer if writer == "template" else f"llm:{model_name or 'model'}"
    summary = CaptionSummary("running", label)
    vocabulary = load_vocabulary()
    with library.job_lock("caption"):
        ids = track_ids if track_ids is not None else [
            t for (t,) in library.conn.execute("SELECT id FROM tracks WHERE status = 'ok' ORDER BY id")]
        done = {t: (m, h) for t, m, h in library.conn.execute(
            "SELECT track_id, model, evidence_hash FROM captions WHERE start_s = 0")}
        progress(Progress("caption", 0, len(ids)))
        changed: list[int] = []
        for index, track_id in enumerate(ids, start=1):
            if cancel.cancelled:
                break
            summary.tracks += 1
            evidence = track_evidence(library, track_id, vocabulary)
            if evidence is None:
                continue
            digest = evidence.digest()
            if not overwrite and done.get(track_id) in ((label, digest), (_fallback(label), digest)):
                summary.unchanged += 1
                progress(Progress("caption", index, len(ids)))
                continue
            written_by = label
            if writer == "llm":
                text, how = llm_caption(complete, evidence, vocabulary)
                if how != "llm" and text:
                    written_by = _fallback(label)  # the caption says which writer really wrote it
                    summary.fell_back += 1
                    if len(summary.reasons) < 20:
                        summary.reasons.append(f"track {track_id}: {how}")
            else:
                text = template_caption(evidence, vocabulary)
            if not text:
                summary.without_evidence += 1
                if track_id in done:  # what it was written from is gone (tags removed): so is the caption
                    with library.transaction() as conn:
                        conn.execute("DELETE FROM captions WHERE track_id = ?", (track_id,))
                progress(Progress("caption", index, len(ids)))
                continue
            with library.transaction() as conn:
                conn.execute("DELETE FROM captions WHERE track_id = ?", (track_id,))
                conn.execute("INSERT INTO captions (track_id, start_s, end_s, text, model, evidence, evidence_hash, "
                             "created_at) VALUES (?, 0, ?, ?, ?, ?, ?, ?)",
                             (track_id, evidence.duration_s, text, written_by, evidence.to_json(), digest, utc_now()))
            summary.written += 1
            changed.append(track_id)
            progress(Progress("caption", index, len(ids), current=text[:60]))
        refresh_search_index(library)
    summary.status = "cancelled" if cancel.cancelled else "completed"
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return summary


def _fallback(label: str) -> str:
    return f"template ({label} not grounded)"


def track_caption(library: Library, track_id: int) -> dict[str, Any] | None:
    row = library.conn.execute("SELECT text, model, start_s, end_s, created_at FROM captions WHERE track_id = ? "
                               "ORDER BY start_s LIMIT 1", (track_id,)).fetchone()
    if row is None:
        return None
    return {"text": row[0], "model": row[1], "start_s": row[2], "end_s": row[3], "created_at": row[4]}
