"""The caption job: a caption for every track that has none (or whose evidence changed), stored in the
library and in the search index. Resumable: a track whose caption was written from the same evidence
by the same writer is skipped."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jamcaps_desktop.caption.evidence import track_evidence
from jamcaps_desktop.caption.search import refresh_search_index
from jamcaps_desktop.caption.writers import llm_caption, template_caption
from jamcaps_desktop.impute.vocabulary import load_vocabulary
from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.jobs.workers import in_order
from jamcaps_desktop.library.database import Library, utc_now

WRITERS = ("template", "llm", "lp-musiccaps")


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
            cancel: CancelToken | None = None, captioner: Any = None) -> CaptionSummary:
    """Write captions with ``writer``: 'template'; 'llm' with ``complete``, a language model; or
    'lp-musiccaps' with ``captioner`` (``models.captioner_install.Captioner``), which listens to the audio."""
    if writer not in WRITERS:
        raise ValueError(f"no caption writer {writer!r} (available: {', '.join(WRITERS)})")
    if writer == "llm" and complete is None:
        raise ValueError("the llm caption writer needs a language model")
    if writer == "lp-musiccaps" and captioner is None:
        raise ValueError("the lp-musiccaps caption writer needs the installed captioner")
    progress, cancel = progress or no_progress, cancel or CancelToken()
    started = time.monotonic()
    label = {"template": "template", "llm": f"llm:{model_name or 'model'}"}.get(writer, writer)
    summary = CaptionSummary("running", label)
    vocabulary = load_vocabulary()
    with library.job_lock("caption"):
        ids = track_ids if track_ids is not None else [
            t for (t,) in library.conn.execute("SELECT id FROM tracks WHERE status = 'ok' ORDER BY id")]
        done = {t: (m, h) for t, m, h in library.conn.execute(
            "SELECT track_id, model, evidence_hash FROM captions")}
        progress(Progress("caption", 0, len(ids)))
        listen: list[tuple[int, Any, str]] = []
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
            if writer == "lp-musiccaps":  # captioned below, many tracks' chunks at a time
                listen.append((track_id, evidence, digest))
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
                        conn.execute("DELETE FROM caption_chunks WHERE track_id = ?", (track_id,))
                progress(Progress("caption", index, len(ids)))
                continue
            with library.transaction() as conn:
                conn.execute("DELETE FROM caption_chunks WHERE track_id = ?", (track_id,))
                conn.execute("INSERT OR REPLACE INTO captions (track_id, text, model, evidence, evidence_hash, "
                             "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                             (track_id, text, written_by, evidence.to_json(), digest, utc_now()))
            summary.written += 1
            progress(Progress("caption", index, len(ids), current=text[:60]))
        if listen:
            _caption_audio(library, captioner, label, listen, summary, cancel,
                           lambda done: progress(Progress("caption", len(ids) - len(listen) + done, len(ids))))
        refresh_search_index(library)
    summary.status = "cancelled" if cancel.cancelled else "completed"
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return summary


def _caption_audio(library: Library, captioner: Any, label: str, tracks: list[tuple[int, Any, str]],
                   summary: CaptionSummary, cancel: CancelToken, done: Callable[[int], None]) -> None:
    """Caption every 10-s chunk of the tracks' audio, ``captioner.batch`` chunks at a time whichever tracks
    they come from (a batch keeps a GPU busy; a three-minute track has 18 chunks), while worker processes
    decode the next tracks. A track's caption is its chunk caption most like the others; a track whose
    audio cannot be decoded gets a reason and the job goes on."""
    import numpy as np

    from jamcaps_desktop.library.paths import fs_path
    from jamcaps_desktop.models import lpmc
    from jamcaps_desktop.models.captioner_install import chunk_times, track_caption_from_chunks

    keys = dict(library.conn.execute("SELECT id, path_key FROM tracks"))
    paths = [fs_path(bytes(keys[track_id])) for track_id, _evidence, _digest in tracks]
    workers = max(1, min(len(paths), (os.cpu_count() or 1) - 1)) if captioner.device == "CUDAExecutionProvider" else 1
    waiting: deque[tuple[int, np.ndarray]] = deque()  # (position in ``tracks``, chunks not yet captioned)
    texts: dict[int, list[str]] = {}
    counts: dict[int, int] = {}
    finished = 0

    def store(position: int) -> None:
        nonlocal finished
        track_id, evidence, digest = tracks[position]
        chunks = chunk_times(texts.pop(position))
        whole = track_caption_from_chunks([text for _s, _e, text in chunks])
        now = utc_now()
        with library.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO captions (track_id, text, model, evidence, evidence_hash, "
                         "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                         (track_id, whole, label, evidence.to_json(), digest, now))
            conn.execute("DELETE FROM caption_chunks WHERE track_id = ?", (track_id,))
            conn.executemany("INSERT INTO caption_chunks (track_id, start_s, end_s, text, model) "
                             "VALUES (?, ?, ?, ?, ?)",
                             [(track_id, start, end, text, label) for start, end, text in chunks])
        summary.written += 1
        finished += 1
        done(finished)

    def caption_batch(size: int) -> None:
        owners, pieces, taken = [], [], 0
        while waiting and taken < size:
            position, chunks = waiting[0]
            take = min(size - taken, len(chunks))
            owners.append((position, take))
            pieces.append(chunks[:take])
            taken += take
            if take == len(chunks):
                waiting.popleft()
            else:
                waiting[0] = (position, chunks[take:])
        captions = iter(captioner.captions(np.concatenate(pieces)))
        for position, take in owners:
            texts[position].extend(next(captions) for _ in range(take))
            if len(texts[position]) == counts[position]:
                store(position)

    decoded = in_order(_decode_track, paths, workers, cancel, ahead=2 * workers,
                       crashed=lambda _path: "the decoder crashed on this file")
    try:
        for position, samples in enumerate(decoded):
            if isinstance(samples, str):
                summary.reasons.append(f"track {tracks[position][0]}: {samples}")
                finished += 1
                done(finished)
                continue
            chunks = lpmc.chunks_of(samples)
            counts[position], texts[position] = len(chunks), []
            waiting.append((position, chunks))
            while sum(len(c) for _p, c in waiting) >= captioner.batch and not cancel.cancelled:
                caption_batch(captioner.batch)
            if cancel.cancelled:
                break
        while waiting and not cancel.cancelled:  # the last, partial batch
            caption_batch(captioner.batch)
    finally:
        decoded.close()


def _decode_track(path: str) -> Any:
    """A file's audio as 16 kHz mono float32 samples, or why it cannot be decoded (runs in a worker)."""
    import numpy as np

    from jamcaps_desktop.audio.decode import DecodeError, iter_samples

    try:
        pieces = list(iter_samples(path, 16000))
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # one file the decoder trips over never stops the job
        return f"the audio could not be decoded ({type(exc).__name__}: {exc})"
    return np.concatenate(pieces) if pieces else "no audio could be decoded from the file"


def _fallback(label: str) -> str:
    return f"template ({label} not grounded)"


def track_caption(library: Library, track_id: int) -> dict[str, Any] | None:
    row = library.conn.execute("SELECT text, model, created_at FROM captions WHERE track_id = ?",
                               (track_id,)).fetchone()
    if row is None:
        return None
    chunks = [{"start_s": s, "end_s": e, "text": t} for s, e, t in library.conn.execute(
        "SELECT start_s, end_s, text FROM caption_chunks WHERE track_id = ? ORDER BY start_s", (track_id,))]
    return {"text": row[0], "model": row[1], "created_at": row[2], "chunks": chunks}
