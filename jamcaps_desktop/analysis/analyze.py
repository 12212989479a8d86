"""The analysis job: listen to every track with the installed audio models.

Each track is decoded once per input format the models share (the musicnn taggers both take 16 kHz
log-mel windows of 187 frames, about 3 s), the windows go through each model in batches, and per track
the job stores each model's mean label probabilities over the windows and an embedding: the mean of
the model's ``penultimate`` layer (200 values) over the windows, L2-normalised. That layer is the last
one before the tag classifier, so it summarises what the tagger heard in the terms it was trained on
(genres, moods, instruments), in a vector small enough for similarity search; its mean over windows
describes the whole track rather than one moment.

The job also measures each track's integrated loudness (EBU R128) and sample peak.

Tracks already analysed by the same model version, whose audio is unchanged, are skipped, so the job
is resumable; a file that cannot be decoded gets an error row and the job goes on.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jamcaps_desktop.audio.decode import DecodeError, iter_windows
from jamcaps_desktop.audio.features import MUSICNN_HOP, MUSICNN_RATE, musicnn_melspec
from jamcaps_desktop.audio.loudness import Loudness
from jamcaps_desktop.audio.loudness import measure as measure_loudness
from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.jobs.workers import init_worker
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.library.paths import fs_path
from jamcaps_desktop.models import registry
from jamcaps_desktop.models.engine import make_session

log = logging.getLogger(__name__)

BATCH_WINDOWS = 8  # windows per model run: ~10 MB of intermediate tensors each on the CPU
PARALLEL_ANALYSIS_THRESHOLD = 4  # fewer files than this are decoded in the job's own process
MUSICNN_FRAMES = 187
MUSICNN_WINDOW_S = MUSICNN_FRAMES * MUSICNN_HOP / MUSICNN_RATE  # 2.992 s: exactly 187 frames per window


@dataclass
class AnalysisSummary:
    status: str
    models: list[str]
    device: str = "cpu"
    analysed: int = 0
    skipped: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds_of_audio: float = 0.0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "error_count": len(self.errors)}


@dataclass
class _Loaded:
    name: str
    version: str
    labels: list[str]
    session: Any


def _audio_key(row: dict[str, Any]) -> str:
    return f"{row['codec']}|{row['sample_rate']}|{row['channels']}|{round(row['duration'] or 0, 2)}"


def _windows(path: str) -> Iterator[np.ndarray]:
    for window in iter_windows(path, MUSICNN_RATE, MUSICNN_WINDOW_S):
        yield musicnn_melspec(window)[:MUSICNN_FRAMES]


@dataclass
class _Heard:
    """What a worker extracts from one file: model input windows and the loudness measurement."""

    windows: np.ndarray | None
    loudness: Loudness | None
    error: str | None = None
    loudness_error: str | None = None


def _hear(path: str) -> _Heard:
    """Decode and compute the front end of one file (runs in a worker process)."""
    try:
        mels = np.stack(list(_windows(path)))
    except DecodeError as exc:
        return _Heard(None, None, str(exc))
    except ValueError:  # nothing to stack
        return _Heard(None, None, "no audio could be decoded from the file")
    try:
        loudness, loudness_error = measure_loudness(path), None
    except DecodeError as exc:
        loudness, loudness_error = None, str(exc)
    return _Heard(mels.astype(np.float32, copy=False), loudness, None, loudness_error)


def _heard_in_order(paths: list[str], cancel: CancelToken, workers: int | None) -> Iterator[_Heard]:
    """Decoded windows per file, in order; decoding runs in worker processes when there are several files,
    so the models are fed while the next files are decoded."""
    count = workers if workers is not None else min(4, os.cpu_count() or 1)
    if count <= 1 or len(paths) < PARALLEL_ANALYSIS_THRESHOLD:
        for path in paths:
            if cancel.cancelled:
                return
            yield _hear(path)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=init_worker) as pool:
        window = count + 1  # a few files ahead: enough to keep the models busy, bounded memory
        futures = [pool.submit(_hear, path) for path in paths[:window]]
        for index in range(len(paths)):
            if cancel.cancelled or index >= len(futures):
                for future in futures[index:]:
                    future.cancel()
                return
            try:
                heard = futures[index].result()
            except BrokenProcessPool:
                log.warning("the decoder crashed on %s", paths[index])
                yield _Heard(None, None, "the decoder crashed on this file")
                pool.shutdown(wait=False, cancel_futures=True)
                yield from _heard_in_order(paths[index + 1:], cancel, workers)  # a fresh pool for the rest
                return
            futures[index] = None  # type: ignore[call-overload]  # release the memory of this result
            if len(futures) < len(paths) and not cancel.cancelled:
                futures.append(pool.submit(_hear, paths[len(futures)]))
            yield heard


def _todo(library: Library, models: list[_Loaded], limit: int | None) -> tuple[list[dict[str, Any]], int]:
    rows = [dict(zip(("id", "path_key", "path", "codec", "sample_rate", "channels", "duration"), r, strict=True))
            for r in library.conn.execute(
                "SELECT id, path_key, path, codec, sample_rate, channels, duration FROM tracks "
                "WHERE status = 'ok' ORDER BY id")]
    done: dict[tuple[int, str], tuple[str, str]] = {
        (track_id, model): (version, key) for track_id, model, version, key in library.conn.execute(
            "SELECT track_id, model, model_version, audio_key FROM analyses")}
    measured = dict(library.conn.execute("SELECT track_id, audio_key FROM track_features").fetchall())
    todo = []
    for row in rows:
        key = _audio_key(row)
        if any(done.get((row["id"], m.name)) != (m.version, key) for m in models) or measured.get(row["id"]) != key:
            todo.append(row)
    skipped = len(rows) - len(todo)
    return (todo[:limit] if limit else todo), skipped


def analyze(library: Library, *, models: list[str] | None = None, device: str = "auto", limit: int | None = None,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
            workers: int | None = None) -> AnalysisSummary:
    """Analyse the library's tracks that the installed models have not heard yet."""
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    names = models or registry.default_models()
    loaded = []
    for name in names:
        model = registry.verify(name)  # ModelError names the install command
        if model.manifest["input"]["front_end"] != "musicnn-logmel":
            raise registry.ModelError(f"{name}: the {model.manifest['input']['front_end']} front end is not "
                                      "available in this version")
        loaded.append(_Loaded(name, model.version, model.labels, make_session(model.onnx_path, device)))
    summary = AnalysisSummary("running", names, device=loaded[0].session.get_providers()[0] if loaded else "cpu")
    started = time.monotonic()
    with library.job_lock("analyze"):
        todo, summary.skipped = _todo(library, loaded, limit)
        progress(Progress("analyze", 0, len(todo)))
        heard_files = _heard_in_order([fs_path(bytes(row["path_key"])) for row in todo], cancel, workers)
        try:
            for done, (row, heard) in enumerate(zip(todo, heard_files, strict=False), start=1):
                _store_analysis(library, row, heard, loaded, summary)
                speed = summary.seconds_of_audio / max(time.monotonic() - started, 1e-6)
                progress(Progress("analyze", done, len(todo), current=row["path"], message=f"{speed:.0f}× real time"))
        finally:
            heard_files.close()
        summary.status = "cancelled" if cancel.cancelled else "completed"
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return summary


def _store_analysis(library: Library, row: dict[str, Any], heard: _Heard, models: list[_Loaded],
                    summary: AnalysisSummary) -> None:
    sums: dict[str, list[np.ndarray]] = {m.name: [np.zeros(len(m.labels)), np.zeros(200)] for m in models}
    count = 0
    if heard.windows is not None:
        for start in range(0, len(heard.windows), BATCH_WINDOWS):
            _run_batch(heard.windows[start:start + BATCH_WINDOWS], models, sums)
        count = len(heard.windows)
    error = heard.error
    loudness = heard.loudness
    now = utc_now()
    key = _audio_key(row)
    with library.transaction() as conn:
        conn.execute("INSERT OR REPLACE INTO track_features (track_id, audio_key, loudness_lufs, peak_dbfs, error, "
                     "measured_at) VALUES (?, ?, ?, ?, ?, ?)",
                     (row["id"], key, loudness.integrated_lufs if loudness else None,
                      loudness.sample_peak_dbfs if loudness else None, heard.loudness_error or error, now))
        for model in models:
            if error is None and count:
                tags, penultimate = sums[model.name]
                labels = {label: round(float(p), 5) for label, p in zip(model.labels, tags / count, strict=True)}
                embedding = (penultimate / count).astype(np.float32)
                norm = float(np.linalg.norm(embedding))
                embedding = embedding / norm if norm > 0 else embedding
                values = ("ok", None, json.dumps(labels), embedding.tobytes())
            else:
                values = ("error", error or "no audio", None, None)
            conn.execute(
                "INSERT OR REPLACE INTO analyses (track_id, model, model_version, audio_key, status, error, labels, "
                "embedding, windows, seconds, device, analysed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["id"], model.name, model.version, key, *values, count, count * MUSICNN_WINDOW_S,
                 model.session.get_providers()[0], now))
    if error is None and count:
        summary.analysed += 1
        summary.seconds_of_audio += min(count * MUSICNN_WINDOW_S, row["duration"] or count * MUSICNN_WINDOW_S)
    else:
        summary.errors.append({"path": row["path"], "reason": error or "no audio"})


def _run_batch(batch: np.ndarray, models: list[_Loaded], sums: dict[str, list[np.ndarray]]) -> None:
    for model in models:
        tags, penultimate = model.session.run(["tags", "penultimate"], {"melspec": batch.astype(np.float32)})
        sums[model.name][0] += tags.sum(axis=0)
        sums[model.name][1] += penultimate.sum(axis=0)


def track_features(library: Library, track_id: int) -> dict[str, Any] | None:
    row = library.conn.execute("SELECT loudness_lufs, peak_dbfs, error FROM track_features WHERE track_id = ?",
                               (track_id,)).fetchone()
    return None if row is None else {"loudness_lufs": row[0], "peak_dbfs": row[1], "error": row[2]}


def track_analyses(library: Library, track_id: int) -> list[dict[str, Any]]:
    """The stored analyses of a track, labels sorted by probability."""
    out = []
    for model, version, status, error, labels, windows in library.conn.execute(
            "SELECT model, model_version, status, error, labels, windows FROM analyses WHERE track_id = ? "
            "ORDER BY model", (track_id,)):
        ranked = sorted(json.loads(labels).items(), key=lambda item: -item[1]) if labels else []
        out.append({"model": model, "version": version, "status": status, "error": error, "windows": windows,
                    "labels": ranked})
    return out
