"""The analysis job: listen to every track with the installed audio models, and measure it.

Each model's manifest declares its input (front end, sample rate, window length; see
``audio.frontends``) and its outputs (``labels``: per-window label probabilities; ``embedding``: the
layer used as the track's embedding). The job decodes each track once per sample rate the models need,
cuts it into each model's windows, runs the windows through the models in batches that span tracks
(a batch is filled from as many tracks as it takes, which is what keeps a GPU busy), and stores per
track and model the mean label probabilities over the windows and an embedding: the mean of the
embedding layer over the windows (and over tokens, for encoders that output one vector per token),
L2-normalised. For the musicnn taggers that layer is ``penultimate`` (200 values), the last one before
the tag classifier: it summarises what the tagger heard in the terms it was trained on (genres, moods,
instruments), in a vector small enough for similarity search; its mean over windows describes the
whole track rather than one moment.

Without any model the job also measures each track's tempo (BPM), key, integrated loudness (EBU R128)
and sample peak.

Tracks already analysed by the same model version, whose audio is unchanged, are skipped, so the job
is resumable; a file that cannot be decoded gets an error row and the job goes on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jamcaps_desktop.analysis import kept_sessions
from jamcaps_desktop.analysis.device_front_ends import DeviceFrontEnds, GraphsAhead
from jamcaps_desktop.analysis.hearing import MEASURE_RATE, Heard, discard, hear
from jamcaps_desktop.analysis.native_audio import (
    SharedArray,
    native_audio_folder,
    remove_native_files,
)
from jamcaps_desktop.audio import frontends, resampler
from jamcaps_desktop.audio.frontends import InputSpec
from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.jobs.workers import in_order, single_threaded_workers
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.library.paths import fs_path
from jamcaps_desktop.models import registry
from jamcaps_desktop.models.engine import cuda_wanted, run_options, run_values

log = logging.getLogger(__name__)

BATCH_WINDOWS = {"cpu": 1, "cuda": 64}  # CPU: one window at a time measured fastest (and smallest)
PARALLEL_ANALYSIS_THRESHOLD = 4  # fewer files than this are decoded in the job's own process
FEATURES_VERSION = 2  # 1: loudness; 2: + tempo and key. Older measurements are redone.


@dataclass
class AnalysisSummary:
    status: str
    models: list[str]
    device: str = "cpu"  # the models' provider ("" where no session was made: there was nothing to analyse)
    analysed: int = 0
    skipped: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    seconds_of_audio: float = 0.0
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "error_count": len(self.errors)}


@dataclass(frozen=True)
class _Group:
    """Models that take the same input share its computation."""

    front_end: str
    window_samples: int
    frames: int | None


@dataclass
class _Loaded:
    name: str
    version: str
    labels: list[str]
    session: Any
    spec: InputSpec
    input_name: str
    label_output: str | None
    embedding_output: str | None
    mask_input: str | None = None  # a padding mask the model takes beside its features (BEATs)

    @property
    def group(self) -> _Group:
        return _Group(self.spec.front_end.name, self.spec.window_samples, self.spec.frames)


def _audio_key(row: dict[str, Any]) -> str:
    return f"{row['codec']}|{row['sample_rate']}|{row['channels']}|{round(row['duration'] or 0, 2)}"


def _heard_in_order(paths: list[str], specs: dict[_Group, InputSpec], cancel: CancelToken,
                    workers: int | None, ship_audio: bool = False, native_folder: str | None = None,
                    decoded_samples: bool = True) -> Iterator[Heard]:
    """Decoded inputs per file, in order; decoding runs in worker processes when there are several files,
    so the models are fed while the next files are decoded."""
    count = workers if workers is not None else 1
    # workers that only decode get no specs: unpickling them would import the whole job (and SciPy) in each
    one = functools.partial(hear, specs={} if ship_audio else specs, ship_audio=ship_audio,
                            native_folder=native_folder, decoded_samples=decoded_samples)
    return in_order(one, paths, count, cancel, ahead=_files_in_flight(count, ship_audio),
                    crashed=lambda _path: Heard(error="the decoder crashed on this file"), discard=discard,
                    sequential_below=PARALLEL_ANALYSIS_THRESHOLD)


def _stop_hearing(built: GraphsAhead | None, heard_files: Any, native_folder: str | None) -> None:
    """Stop building graphs ahead and decoding, and remove the shared-memory files of tracks heard but never
    measured (a cancel, a failure, a job that falls back to the CPU)."""
    if built is not None:
        built.close()
    if heard_files is not None:
        heard_files.close()
    if native_folder:
        remove_native_files(native_folder)


def _default_workers(on_gpu: bool, on_device: bool) -> int:
    """With a GPU the cores are free for decoding; on the CPU the models need them too. The job's own
    process takes about three cores when it feeds the GPU the front ends' audio (its threads copy the audio
    over and measure; 13 workers of 16 cores measured faster than 15)."""
    cores = os.cpu_count() or 1
    return max(1, cores - (3 if on_device else 1)) if on_gpu else min(4, cores)


def _files_in_flight(workers: int, ship_audio: bool) -> int:
    """Files handed to the workers ahead of the one the job needs next: enough that a worker rarely waits
    for a slower file before it to be taken (results are taken in order), few enough to bound memory.
    Where the workers only decode for a GPU, twice as many (each holds about 45 MB of shared memory per
    three-minute track): on an H200 that measured 0.63 and 0.68 of decode-alone against 0.62."""
    return (2 * workers if ship_audio else workers) + 1


def _todo(library: Library, models: list[_Loaded], limit: int | None) -> tuple[list[dict[str, Any]], int]:
    rows = [dict(zip(("id", "path_key", "path", "codec", "sample_rate", "channels", "duration"), r, strict=True))
            for r in library.conn.execute(
                "SELECT id, path_key, path, codec, sample_rate, channels, duration FROM tracks "
                "WHERE status = 'ok' ORDER BY id")]
    done: dict[tuple[int, str], tuple[str, str]] = {
        (track_id, model): (version, key) for track_id, model, version, key in library.conn.execute(
            "SELECT track_id, model, model_version, audio_key FROM analyses")}
    measured = {track_id: (key, version) for track_id, key, version in library.conn.execute(
        "SELECT track_id, audio_key, features_version FROM track_features")}
    todo = []
    for row in rows:
        key = _audio_key(row)
        if (any(done.get((row["id"], m.name)) != (m.version, key) for m in models)
                or measured.get(row["id"]) != (key, FEATURES_VERSION)):
            todo.append(row)
    skipped = len(rows) - len(todo)
    return (todo[:limit] if limit else todo), skipped


def _prepare(name: str) -> _Loaded:
    """A model as its manifest describes it, its session not made yet (``_open``): what the decoding
    workers need to start."""
    model = registry.installed(name)  # ModelError names the install command
    spec = model.manifest
    try:
        input_spec = frontends.input_spec(spec["input"])
    except frontends.UnknownFrontEnd as exc:
        raise registry.ModelError(f"{name}: {exc}") from exc
    outputs = spec.get("outputs", {})
    return _Loaded(name, model.version, model.labels, None, input_spec, spec["input"]["name"],
                   outputs.get("labels"), outputs.get("embedding"), spec["input"].get("mask"))


def _open(model: _Loaded, device: str) -> None:
    """Check a prepared model's files and give it its session (kept from an earlier job where one is)."""
    model.session = kept_sessions.model_session(model.name, device)


@dataclass
class _TrackWork:
    """A heard track whose windows are going through the models."""

    row: dict[str, Any]
    heard: Heard
    done: dict[_Group, int]  # windows already run, per group
    sums: dict[str, list[np.ndarray | None]]  # per model: label sum, embedding sum
    sent: dict[_Group, int] = field(default_factory=dict)  # windows handed to the models, per group

    def finished(self) -> bool:
        return all(self.done[g] >= len(self.heard.inputs.get(g, ())) for g in self.done)


class _Batcher:
    """Fills model batches with windows from consecutive tracks, and hands back tracks whose every window
    has been through every model, in their original order.

    With the front ends on the device, a batch's models run in threads of their own while the job's thread
    goes on (the next track, the next batch's features): one batch is in flight at a time, and it is
    settled before the next one starts, so the models' device work overlaps the job's own.

    With ``full_batches`` (on a GPU) a job's last, short batch is filled up with silence: a batch of a new
    size would make cuDNN search its kernels again, which takes longer than the extra windows."""

    def __init__(self, models: list[_Loaded], batch: int, front_ends: DeviceFrontEnds | None = None,
                 full_batches: bool = False) -> None:
        self.models = models
        self.batch = batch
        self.front_ends = front_ends  # where set, the windows are audio and their features are made on the device
        self.full_batches = full_batches
        self.groups: dict[_Group, list[_Loaded]] = {}
        for model in models:
            self.groups.setdefault(model.group, []).append(model)
        most = max(map(len, self.groups.values()), default=1)
        self._pool = ThreadPoolExecutor(most, thread_name_prefix="analysis-model") if front_ends is not None else None
        self._in_flight: tuple[_Group, list[Future[None]], list[tuple[_TrackWork, int]]] | None = None
        self._buffers: dict[_Group, list[np.ndarray]] = {}  # see ``_joined``
        self.pending: deque[_TrackWork] = deque()

    def add(self, row: dict[str, Any], heard: Heard) -> list[_TrackWork]:
        self.pending.append(_TrackWork(row, heard, dict.fromkeys(self.groups, 0),
                                       {m.name: [None, None] for m in self.models}, dict.fromkeys(self.groups, 0)))
        return self._run(full_only=True)

    def warm_up(self, shrink: bool = False) -> None:
        """Run each model (and its window front end, on the device) once on a full batch of silence: a GPU
        chooses its kernels (cuDNN tries them all) and sets up its memory on a graph's first run, which the
        job does while its decoding workers start. ``shrink``: the memory those runs took is given back (see
        ``engine.run_options``), for sessions kept ready while the app waits."""
        for group, models in self.groups.items():
            if self.front_ends is not None:
                features = self.front_ends.features(group, np.zeros((self.batch, group.window_samples), np.float32),
                                                    shrink)
            else:
                window = models[0].spec.features(np.zeros(group.window_samples, dtype=np.float32))
                features = np.ascontiguousarray(np.broadcast_to(window.astype(np.float32),
                                                                (self.batch, *window.shape)))
            for model in models:
                _run_model(model, features, [], shrink)

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):  # a failed batch has already been reported
                self._settle()
            self._pool.shutdown()

    def drain(self) -> list[_TrackWork]:
        return self._run(full_only=False)

    def _run(self, full_only: bool) -> list[_TrackWork]:
        for group, models in self.groups.items():
            while True:
                waiting = sum(len(w.heard.inputs.get(group, ())) - w.sent[group] for w in self.pending)
                if waiting == 0 or (full_only and waiting < self.batch):
                    break
                pieces, owners = [], []
                for work in self.pending:
                    windows = work.heard.inputs.get(group)
                    if windows is None or work.sent[group] >= len(windows):
                        continue
                    take = min(self.batch - sum(len(p) for p in pieces), len(windows) - work.sent[group])
                    pieces.append(windows[work.sent[group]:work.sent[group] + take])
                    owners.append((work, take))
                    if sum(len(p) for p in pieces) >= self.batch:
                        break
                batch = self._joined(group, pieces)
                features = self.front_ends.features(group, batch) if self.front_ends else batch
                for work, take in owners:
                    work.sent[group] += take
                self._settle()
                if self._pool is not None:
                    self._in_flight = (group, [self._pool.submit(_run_model, model, features, owners)
                                               for model in models], owners)
                    continue
                for model in models:
                    _run_model(model, features, owners)
                for work, take in owners:
                    work.done[group] += take
        if not full_only:
            self._settle()
        finished = []
        while self.pending and self.pending[0].finished():
            work = self.pending.popleft()
            work.heard.inputs = {}  # the windows are no longer needed
            finished.append(work)
        return finished

    def _joined(self, group: _Group, pieces: list[np.ndarray]) -> np.ndarray:
        """The pieces as one batch (filled up with silence for full batches), in one of two buffers kept
        for the group: a batch of 64 ten-second windows is 41 MB, which a new array for each batch had to
        be given page by page (in a profiled BEATs job on an H100, a sixth of the job's thread's time; the
        job's pace did not change measurably, the thread having time to spare). Two, because the batch in
        flight may still be read while the next is put together, and only that one."""
        count = sum(len(piece) for piece in pieces)
        size = self.batch if self.full_batches else count
        if len(pieces) == 1 and size == count:
            return pieces[0]
        kept = self._buffers.get(group)
        if kept is None or kept[0].shape[1:] != pieces[0].shape[1:] or kept[0].dtype != pieces[0].dtype:
            kept = self._buffers[group] = [np.empty((self.batch, *pieces[0].shape[1:]), dtype=pieces[0].dtype)
                                           for _ in range(2)]
        kept.reverse()  # the other buffer from last time
        batch = kept[0][:size]
        np.concatenate(pieces, out=batch[:count])
        batch[count:] = 0
        return batch

    def _settle(self) -> None:
        """Wait for the batch in flight; its windows count as run."""
        if self._in_flight is None:
            return
        group, running, owners = self._in_flight
        self._in_flight = None
        for future in running:
            future.result()
        for work, take in owners:
            work.done[group] += take


def _run_model(model: _Loaded, batch: Any, owners: list[tuple[_TrackWork, int]], shrink: bool = False) -> None:
    """Run a batch of model inputs: a numpy array, or an OrtValue already on the model's device (``shrink``:
    see ``engine.run_options``)."""
    names = [n for n in (model.label_output, model.embedding_output) if n]
    # whole windows: nothing is padding (a short tail is zero-filled, as a recording's silence)
    shape = batch.shape if isinstance(batch, np.ndarray) else batch.shape()
    mask = np.zeros(shape[:2], dtype=bool) if model.mask_input else None
    feeds = {model.input_name: batch}
    if model.mask_input:
        feeds[model.mask_input] = mask
    if isinstance(batch, np.ndarray):
        outputs = model.session.run(names, feeds, run_options(model.session, shrink))
    else:
        outputs = [value.numpy() for value in run_values(model.session, feeds, dict.fromkeys(names, "cpu"), shrink)]
    results = dict(zip(names, outputs, strict=True))
    offset = 0
    for work, take in owners:
        sums = work.sums[model.name]
        for slot, name in enumerate((model.label_output, model.embedding_output)):
            if name is None:
                continue
            values = results[name][offset:offset + take]
            if values.ndim == 3:  # one vector per token: the window's vector is their mean
                values = values.mean(axis=1)
            total = values.sum(axis=0, dtype=np.float64)
            sums[slot] = total if sums[slot] is None else sums[slot] + total
        offset += take


def analyze(library: Library, *, models: list[str] | None = None, device: str = "auto", limit: int | None = None,
            progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
            workers: int | None = None, front_ends_on_device: bool | None = None,
            decoded_samples: bool = True) -> AnalysisSummary:
    """Analyse the library's tracks that the installed models have not heard yet, and measure them.

    ``front_ends_on_device`` (default: where the models run on a GPU) computes the model inputs, tempo and
    key with the models' provider instead of in the decoding workers; there, the workers hand over the
    decoded samples as they are (``decoded_samples``), or, with False, resample them themselves (the
    former way, kept for comparing the two: the results are the same to float rounding)."""
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    names = _model_names(models)
    loaded = [_prepare(name) for name in names]
    # the sessions are made once the decoding workers have started: on a GPU they take a few seconds (the
    # first ones in a process most: CUDA starts), which the workers spend decoding. Until then, whether
    # the models run on CUDA is what the machine offers; a provider that fails to start is told below.
    on_gpu = bool(loaded) and cuda_wanted(device)
    summary = AnalysisSummary("running", names, device="")  # the provider of the sessions, once made
    specs = {model.group: model.spec for model in loaded}
    on_device = on_gpu if front_ends_on_device is None else front_ends_on_device
    workers_asked = workers
    workers = _default_workers(on_gpu, on_device) if workers is None else workers
    started = time.monotonic()
    # with the front ends on the device, decoding pools start in the measuring thread: the workers'
    # environment is set here, once, before any thread runs (see ``single_threaded_workers``)
    environment = single_threaded_workers() if on_device else contextlib.nullcontext()
    with library.job_lock("analyze"), environment:
        todo, summary.skipped = _todo(library, loaded, limit)
        progress(Progress("analyze", 0, len(todo)))
        native_folder = native_audio_folder() if on_device and todo else None
        heard_files: Any = None
        built: GraphsAhead | None = None
        batcher: _Batcher | None = None
        stored = 0

        def store(finished: list[_TrackWork]) -> None:
            nonlocal stored
            _store_analyses(library, finished, loaded, summary)
            for work in finished:
                stored += 1
                speed = summary.seconds_of_audio / max(time.monotonic() - started, 1e-6)
                progress(Progress("analyze", stored, len(todo), current=work.row["path"],
                                  message=f"{speed:.0f}× real time"))

        try:
            front_ends = None
            if todo:
                paths = [fs_path(bytes(row["path_key"])) for row in todo]
                heard_files = _heard_in_order(paths, specs, cancel, workers, ship_audio=on_device,
                                              native_folder=native_folder, decoded_samples=decoded_samples)
                if on_device:  # tempo, key and windows are made beside the model runs, in threads of their own
                    ready: Future[DeviceFrontEnds] = Future()
                    heard_files = _MeasuredAhead(heard_files, ready, list(specs))  # the workers start now
                    formats = _likely_formats(todo)
                    if not kept_sessions.has_front_ends(_front_ends_key(specs, "cuda" if on_gpu else "cpu")):
                        built = GraphsAhead(specs, formats)  # beside the models' sessions
            with kept_sessions.making():  # after a window's ``get_ready``, where it is still under way
                if todo:
                    for model in loaded:
                        _open(model, device)
                    summary.device = loaded[0].session.get_providers()[0] if loaded else "CPUExecutionProvider"
                    if on_gpu and summary.device != "CUDAExecutionProvider":
                        log.warning("CUDA could not start: the models run on the CPU")
                        on_gpu = False
                        if front_ends_on_device is None and on_device:  # the CPU's own way after all: decoding
                            # starts again, the workers computing the models' inputs beside the models
                            _stop_hearing(built, heard_files, native_folder)
                            on_device, native_folder, built = False, None, None
                            cpu_workers = _default_workers(False, False) if workers_asked is None else workers_asked
                            heard_files = _heard_in_order(paths, specs, cancel, cpu_workers)
                    if on_device:
                        front_ends = _made_front_ends(ready, specs, "cuda" if on_gpu else "cpu", formats, built)
                batcher = _Batcher(loaded, BATCH_WINDOWS["cuda" if on_gpu else "cpu"], front_ends,
                                   full_batches=on_gpu)
                if on_gpu and todo:
                    _warmed_up(batcher)
            for row, heard in zip(todo, heard_files or (), strict=False):
                store(batcher.add(row, heard))
            store(batcher.drain())  # also after a cancel: what was heard is kept
        finally:
            _stop_hearing(built, heard_files, native_folder)
            if batcher is not None:
                batcher.close()
        summary.status = "cancelled" if cancel.cancelled else "completed"
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return summary


# what the decoders of lossless formats hand over, for warming up their graphs (other codecs: float, planar)
_INTEGER_DECODERS = {"flac": ("int16", True), "pcm_s16le": ("int16", True), "pcm_s16be": ("int16", True),
                     "tta": ("int16", True), "alac": ("int16", False), "ape": ("int16", False),
                     "wavpack": ("int16", False), "tak": ("int16", False)}
PREPARED_FORMATS = 3  # the commonest formats among the tracks to analyse get their sessions before the first track


def _likely_formats(todo: list[dict[str, Any]]) -> list[tuple[int, str, bool]]:
    """The decoded-audio formats (rate, sample type, interleaved) the tracks to analyse will most likely
    decode to, commonest first: their graphs are made before the first track."""
    formats = Counter((row["sample_rate"], *_INTEGER_DECODERS.get(row["codec"] or "", ("float32", False)))
                      for row in todo if row["sample_rate"] and resampler.exact(row["sample_rate"], MEASURE_RATE))
    return [key for key, _count in formats.most_common(PREPARED_FORMATS)]


def _model_names(models: list[str] | None) -> list[str]:
    """The models asked for, else the default audio models (text encoders have their own job)."""
    if models is not None:
        return models
    return [name for name in registry.default_models() if registry.manifest(name).get("kind") != "text-encoder"]


def _front_ends_key(specs: dict[_Group, InputSpec], device: str) -> tuple[Any, ...]:
    return (device, frozenset(specs))


def _warmed_up(batcher: _Batcher, shrink: bool = False) -> None:
    """The batcher's first runs, where its sessions have not had them in this process."""
    key = (batcher.batch, id(batcher.front_ends), *(id(model.session) for model in batcher.models))
    if not kept_sessions.warmed(key):
        batcher.warm_up(shrink)
        kept_sessions.mark_warmed(key)


def get_ready(device: str = "auto", models: list[str] | None = None,
              formats: list[tuple[int, str, bool]] | None = None) -> bool:
    """Make the models' sessions and the front ends a job on a GPU needs, and run each once, keeping them
    for the jobs that follow (``kept_sessions``): what a job does at its start, done ahead, as the window
    opens. ``formats``: the decoded-audio formats to prepare (see ``likely_formats``). Returns whether the
    models are ready on the GPU (False where none is to be used, or, with 'auto', CUDA could not start);
    ModelError where a model is not installed, RuntimeError where 'cuda' was asked for and could not start."""
    loaded = [_prepare(name) for name in _model_names(models)]
    if not loaded or not cuda_wanted(device):
        return False
    specs = {model.group: model.spec for model in loaded}
    formats = formats or []
    with kept_sessions.making():
        for model in loaded:
            _open(model, device)
        if loaded[0].session.get_providers()[0] != "CUDAExecutionProvider":
            return False
        front_ends = _made_front_ends(None, specs, "cuda", formats)
        front_ends.warm_up(formats)
        batcher = _Batcher(loaded, BATCH_WINDOWS["cuda"], front_ends, full_batches=True)
        try:  # the memory the first runs took is given back while the app waits (the job takes it again)
            _warmed_up(batcher, shrink=True)
        finally:
            batcher.close()
    return True


def likely_formats(library: Library) -> list[tuple[int, str, bool]]:
    """The decoded-audio formats the library's tracks most likely decode to (for ``get_ready``)."""
    rows = [{"codec": codec, "sample_rate": rate} for codec, rate in library.conn.execute(
        "SELECT codec, sample_rate FROM tracks WHERE status = 'ok'")]
    return _likely_formats(rows)


def _made_front_ends(ready: Future[DeviceFrontEnds] | None, specs: dict[_Group, InputSpec], device: str,
                     formats: list[tuple[int, str, bool]], built: GraphsAhead | None = None) -> DeviceFrontEnds:
    """The front ends' sessions (kept from an earlier job, or made from the graphs ``built`` ahead), those of
    the decoded-audio ``formats`` included, handed to the measuring threads (``ready``, where a job's)."""
    try:
        front_ends = kept_sessions.front_ends(_front_ends_key(specs, device),
                                              lambda: DeviceFrontEnds(specs, device, built))
    except BaseException as exc:
        if ready is not None:
            ready.set_exception(exc)
        raise
    try:
        front_ends.prepare(formats)
    except Exception:  # only a head start: each track's own measuring reports what fails for it
        log.exception("making the front ends' sessions ahead failed")
    finally:
        if built is not None:
            built.close()  # graphs of formats met later are built as they are needed
        if ready is not None:
            ready.set_result(front_ends)
    return front_ends


_END = object()
# Eight threads sixteen tracks ahead, on an H100 (400 tracks, the same machine, alternating): BEATs 39.6–40.7
# tracks/s once running against 36.7–37.4 with four threads eight ahead; the musicnn taggers, which the models
# limit rather than the measuring, 30.7–30.8 against 31.3–32.4. Before the copies to and from the GPU left
# the interpreter free (``engine.run_values``), eight threads gained nothing: each copy held every thread up.
# Twelve or sixteen gained nothing either (BEATs 40.0–41.3 and 37.5 tracks/s against 39.8–42.6 on another H100).
MEASURED_AHEAD = 16  # tracks measured ahead of the model runs
MEASURE_THREADS = 8  # tracks measured at once: their graphs and copies run beside one another
# and no more decoded samples than this at once, whatever the threads: the GPU holds about five times a track's
# samples while it resamples them, so eight long tracks would take a smaller card's memory (a track the device
# fails to measure is decoded again and measured on the CPU, slowly). Eight five-minute tracks fit.
MEASURED_BYTES = 768 * 1024 * 1024


class _MeasuredAhead:
    """The heard tracks, measured on the device by threads that keep a few tracks ahead: ONNX Runtime
    releases the interpreter while a graph runs, so their graphs and copies, and the waiting for the
    workers, overlap one another and the model runs of the job's thread.

    Its thread starts at once, and with it the decoding workers; the front ends (``front_ends``, resolved
    by the job's thread) are made while the workers start."""

    def __init__(self, heard_files: Iterator[Heard], front_ends: Future[DeviceFrontEnds], groups: list[_Group]
                 ) -> None:
        self._heard_files, self._front_ends, self._groups = heard_files, front_ends, groups
        self._ahead: queue.Queue[Any] = queue.Queue(maxsize=MEASURED_AHEAD)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._measure, name="analysis-measure", daemon=True)
        self._thread.start()

    def __iter__(self) -> _MeasuredAhead:
        return self

    def __next__(self) -> Heard:
        if self._ended:
            raise StopIteration
        item = self._ahead.get()
        if item is _END or isinstance(item, BaseException):
            self._ended = True
            if item is _END:
                raise StopIteration
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._front_ends.cancel()  # where the front ends were never made: no measuring thread waits for them
        self._thread.join()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _measure_one(self, heard: Heard) -> None:
        _measure_on_device(self._front_ends.result(), heard, self._groups)

    def _measure(self) -> None:
        pending: deque[tuple[Heard, Future[None], int]] = deque()
        held = 0  # bytes of decoded samples being measured
        try:
            with ThreadPoolExecutor(max_workers=MEASURE_THREADS, thread_name_prefix="analysis-measure") as pool:
                for heard in self._heard_files:
                    size = _handed_bytes(heard)
                    pending.append((heard, pool.submit(self._measure_one, heard), size))
                    held += size
                    # in order: a track goes on once it and every track before it are measured
                    while pending and (len(pending) > MEASURE_THREADS or pending[0][1].done()
                                       or (held > MEASURED_BYTES and len(pending) > 1)):
                        measured, measuring, size = pending.popleft()
                        held -= size
                        if not self._put(_settled(measured, measuring)):
                            return
                while pending:
                    measured, measuring, _size = pending.popleft()
                    if not self._put(_settled(measured, measuring)):
                        return
        except BaseException as exc:  # the workers' failure is the job's: hand it over
            self._put(exc)
        finally:
            self._heard_files.close()  # type: ignore[attr-defined]
            self._put(_END)


def _handed_bytes(heard: Heard) -> int:
    """The samples a worker handed over for the device to measure, in bytes."""
    return sum(part.array.nbytes for part in (heard.raw, heard.native) if part is not None)


def _settled(heard: Heard, measuring: Future[None]) -> Heard:
    exc = measuring.exception()
    if exc is not None:  # one track the graphs trip over never stops the batch
        log.error("measuring a track on the device failed: %s", exc)
        heard.error = f"the audio could not be measured ({type(exc).__name__}: {exc})"
    return heard


def _measure_on_device(front_ends: DeviceFrontEnds, heard: Heard, groups: list[_Group]) -> None:
    """Loudness, tempo, key and the model windows of a track whose worker handed over its audio."""
    native, heard.native = heard.native, None
    raw, heard.raw = heard.raw, None
    on_device = None  # the 16 kHz audio as it stays on the device, where it was resampled there
    if raw is not None:
        try:  # removes the file, whatever happens
            heard.audio, on_device, heard.loudness = front_ends.decoded_here_and_there(raw)
        except Exception:  # e.g. the GPU's memory: the file is decoded again here, and resampled by FFmpeg
            log.exception("measuring %s's decoded samples on the device failed", heard.source)
            again = hear(heard.source, {}, ship_audio=True) if heard.source else Heard(error="no audio")
            if again.error:
                heard.error = again.error
                return
            heard.audio, heard.loudness = again.audio, again.loudness
    if native is not None:
        try:
            heard.loudness = front_ends.loudness(native)  # removes the file, whatever happens
        except Exception:  # no loudness is no reason to lose the track's other results
            log.exception("measuring the loudness on the device failed")
    audio, heard.audio = heard.audio, None
    if isinstance(audio, SharedArray):
        audio = audio.take()
    if audio is None or heard.error:
        return
    if on_device is None:  # copied over once, for both measurements
        on_device = front_ends.on_device(audio)
    heard.tempo = front_ends.tempo(on_device, len(audio))
    heard.key = front_ends.key(on_device, len(audio))
    heard.inputs = front_ends.cut(audio, groups)
    if groups and not heard.inputs:
        heard.error = "no audio could be decoded from the file"


def _store_analyses(library: Library, finished: list[_TrackWork], models: list[_Loaded],
                    summary: AnalysisSummary) -> None:
    """Store the finished tracks' measurements and model results, in one transaction (a commit for each
    track took a twentieth of the job's thread's time in a profiled BEATs job on an H100)."""
    if not finished:
        return
    with library.transaction() as conn:
        for work in finished:
            _store_analysis(conn, work, models)
    for work in finished:
        if work.heard.error is None:
            summary.analysed += 1
            summary.seconds_of_audio += work.heard.seconds
        else:
            summary.errors.append({"path": work.row["path"], "reason": work.heard.error})


def _store_analysis(conn: Any, work: _TrackWork, models: list[_Loaded]) -> None:
    row, heard = work.row, work.heard
    error = heard.error
    loudness, tempo, key = heard.loudness, heard.tempo, heard.key
    now = utc_now()
    audio_key = _audio_key(row)
    conn.execute(
        "INSERT OR REPLACE INTO track_features (track_id, audio_key, features_version, loudness_lufs, peak_dbfs, "
        "bpm, bpm_confidence, key, key_confidence, error, measured_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (row["id"], audio_key, FEATURES_VERSION, loudness.integrated_lufs if loudness else None,
         loudness.sample_peak_dbfs if loudness else None, tempo.bpm if tempo else None,
         tempo.confidence if tempo else None, key.name if key else None, key.confidence if key else None,
         error, now))
    for model in models:
        count = work.done[model.group]
        label_sum, embedding_sum = work.sums[model.name]
        if error is None and count:
            labels = None
            if label_sum is not None:  # rounded as a whole: 527 labels one by one took a millisecond
                labels = json.dumps(dict(zip(model.labels, np.round(label_sum / count, 5).tolist(), strict=True)))
            blob = None
            if embedding_sum is not None:
                embedding = (embedding_sum / count).astype(np.float32)
                norm = float(np.linalg.norm(embedding))
                blob = (embedding / norm if norm > 0 else embedding).tobytes()
            values = ("ok", None, labels, blob)
        else:
            values = ("error", error or "no audio", None, None)
        conn.execute(
            "INSERT OR REPLACE INTO analyses (track_id, model, model_version, audio_key, status, error, labels, "
            "embedding, windows, seconds, device, analysed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row["id"], model.name, model.version, audio_key, *values, count, count * model.spec.window_s,
             model.session.get_providers()[0], now))


def track_features(library: Library, track_id: int) -> dict[str, Any] | None:
    """The stored measurements of a track: loudness, peak, tempo and key (with confidences)."""
    names = ("loudness_lufs", "peak_dbfs", "bpm", "bpm_confidence", "key", "key_confidence", "error")
    row = library.conn.execute(f"SELECT {', '.join(names)} FROM track_features WHERE track_id = ?",
                               (track_id,)).fetchone()
    return None if row is None else dict(zip(names, row, strict=True))


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
