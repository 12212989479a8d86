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

import av
import numpy as np

from jamcaps_desktop.analysis.device_front_ends import DeviceFrontEnds
from jamcaps_desktop.analysis.native_audio import (
    NATIVE_BYTES,
    RAW_BYTES,
    RAW_FORMATS,
    NativeAudio,
    RawAudio,
    RawWriter,
    SharedArray,
    native_audio_folder,
    remove_native_files,
    save_array,
    save_native,
)
from jamcaps_desktop.audio import frontends, resampler
from jamcaps_desktop.audio.decode import DecodeError, DecodeStats, iter_frames, iter_outputs
from jamcaps_desktop.audio.frontends import InputSpec, Windower
from jamcaps_desktop.audio.key import Key, PitchProfile
from jamcaps_desktop.audio.key import estimate as estimate_key
from jamcaps_desktop.audio.loudness import Loudness, LoudnessMeter, step_samples
from jamcaps_desktop.audio.tempo import OnsetEnvelope, Tempo
from jamcaps_desktop.audio.tempo import estimate as estimate_tempo
from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.jobs.workers import in_order, single_threaded_workers
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.library.paths import fs_path
from jamcaps_desktop.models import registry
from jamcaps_desktop.models.engine import cuda_wanted, make_session

log = logging.getLogger(__name__)

BATCH_WINDOWS = {"cpu": 1, "cuda": 64}  # CPU: one window at a time measured fastest (and smallest)
PARALLEL_ANALYSIS_THRESHOLD = 4  # fewer files than this are decoded in the job's own process
MEASURE_RATE = 16000  # tempo and key are measured on the 16 kHz decode
RAW_BLOCK = 65536  # decoded samples a worker gathers before it writes them to shared memory
RAW_ROOM_MARGIN = 1.1  # a planar channel's room in shared memory: the stated duration times this, and 2 s
FEATURES_VERSION = 2  # 1: loudness; 2: + tempo and key. Older measurements are redone.


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


@dataclass
class _Heard:
    """What a worker extracts from one file: model inputs per group, and the signal measurements."""

    inputs: dict[_Group, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    loudness: Loudness | None = None
    tempo: Tempo | None = None
    key: Key | None = None
    error: str | None = None
    audio: np.ndarray | SharedArray | None = None  # the 16 kHz mono audio, where the front ends run on the GPU
    native: NativeAudio | None = None  # the audio at its own rate, for the loudness on the models' device
    raw: RawAudio | None = None  # the decoded samples as they are, resampled and measured on the models' device
    source: str | None = None  # the file, where it may have to be decoded again (the device failed on ``raw``)


def _hear(path: str, specs: dict[_Group, InputSpec], ship_audio: bool = False,
          native_folder: str | None = None, decoded_samples: bool = True) -> _Heard:
    """Decode one file once and compute every group's model inputs and the measurements (runs in a worker).
    With ``ship_audio`` the worker hands the audio over instead, for the front ends on the models' device
    (``device_front_ends``): where there is shared memory (``native_folder``), the decoded samples as
    they are, which the device resamples and measures; for formats, rates and lengths it does not take,
    the 16 kHz audio and the audio at its own rate for the loudness; without shared memory, the 16 kHz
    audio, the worker measuring the loudness itself. (``decoded_samples=False`` always hands over the 16 kHz
    audio, as before the device resampled: for comparing the two.)"""
    try:
        if not ship_audio:
            return _hear_features(path, specs)
        heard = _hear_raw(path, native_folder) if native_folder and decoded_samples else None
        return heard or _hear_audio(path, native_folder)
    except DecodeError as exc:
        return _Heard(error=str(exc))
    except Exception as exc:  # one file the decoding trips over never stops the batch
        log.exception("decoding %s failed", path)
        return _Heard(error=f"the audio could not be decoded ({type(exc).__name__}: {exc})")


def _hear_features(path: str, specs: dict[_Group, InputSpec]) -> _Heard:
    heard = _Heard()
    rates = [MEASURE_RATE, *sorted({spec.sample_rate for spec in specs.values()} - {MEASURE_RATE})]
    outputs: list[tuple[int | None, bool]] = [(rate, True) for rate in rates] + [(None, False)]  # loudness: own rate
    loudness_output = len(outputs) - 1
    windowers = {group: Windower(group.window_samples) for group in specs}
    by_rate = {index: [g for g in specs if specs[g].sample_rate == rate] for index, rate in enumerate(rates)}
    features: dict[_Group, list[np.ndarray]] = {group: [] for group in specs}
    onsets, pitches = OnsetEnvelope(), PitchProfile()
    meter: LoudnessMeter | None = None
    stats = DecodeStats()
    for index, chunk in iter_outputs(path, outputs, stats=stats):
        if index == loudness_output:
            meter = meter or LoudnessMeter(stats.source_rate)
            meter.feed(chunk)
            continue
        for group in by_rate[index]:
            features[group].extend(specs[group].features(w) for w in windowers[group].feed(chunk))
        if index == 0:
            onsets.feed(chunk)
            pitches.feed(chunk)
    for group, windower in windowers.items():
        features[group].extend(specs[group].features(w) for w in windower.finish())
        if features[group]:
            heard.inputs[group] = np.stack(features[group]).astype(np.float32, copy=False)
    if specs and not heard.inputs:
        return _Heard(error="no audio could be decoded from the file")
    heard.seconds = stats.samples / MEASURE_RATE
    heard.tempo = estimate_tempo(onsets.envelope())
    heard.key = estimate_key(pitches.profile(), pitches.frames)
    heard.loudness = meter.result(stats.channels) if meter else None
    return heard


def _hear_raw(path: str, native_folder: str) -> _Heard | None:
    """Decode only: the decoder's samples go to shared memory as they are (the decoding workers limit the
    analysis on a GPU, and converting and resampling cost them about as much again as decoding). None
    where the device cannot take the track: a sample format or rate ratio it does not handle, a format
    that changes midway, a very long or very short track, no room in shared memory."""
    stats = DecodeStats()
    writer: RawWriter | None = None
    shape: tuple[str, str, int] | None = None
    names: list[str] = []
    fifo = av.AudioFifo()  # frames gathered into blocks: one write per block and plane
    try:
        for frame in iter_frames(path, stats):
            current = (frame.format.name, frame.layout.name, frame.sample_rate)
            if writer is None:
                writer = _raw_writer(frame, stats, native_folder)
                if writer is None:
                    return None
                shape, names = current, [channel.name for channel in frame.layout.channels]
            elif current != shape:  # a FIFO must never be given frames of another format
                return None
            fifo.write(frame)
            if fifo.samples >= RAW_BLOCK and (not writer.write(fifo.read(RAW_BLOCK)) or writer.bytes() > RAW_BYTES):
                return None
        if writer is None or (fifo.samples and not writer.write(fifo.read())):
            return None
        rate = shape[2] if shape else 0
        if writer.length < max(4 * step_samples(rate), resampler.shortest(rate, MEASURE_RATE)):
            return None
        try:
            raw = writer.finish(rate, names)
        except OSError:  # no room left in shared memory to move the channels together
            return None
        writer = None
    finally:
        if writer is not None:
            writer.discard()
    return _Heard(seconds=resampler.output_length(rate, MEASURE_RATE, raw.length) / MEASURE_RATE, raw=raw,
                  source=path)


def _raw_writer(frame: Any, stats: DecodeStats, native_folder: str) -> RawWriter | None:
    """A writer for a track whose first decoded frame is ``frame``; None where the device cannot take it."""
    kind = RAW_FORMATS.get(frame.format.name)
    rate = frame.sample_rate
    if kind is None or not rate or not resampler.exact(rate, MEASURE_RATE):
        return None
    dtype, channels, interleaved = np.dtype(kind), len(frame.layout.channels), not frame.format.is_planar
    room = RAW_BYTES // dtype.itemsize
    if not interleaved and channels > 1:  # each channel's region: the stated duration and a margin
        if not stats.expected_seconds:
            return None
        room = min(room // channels, int(stats.expected_seconds * RAW_ROOM_MARGIN * rate) + 2 * rate)
    try:
        return RawWriter(native_folder, dtype, channels, interleaved, room)
    except OSError:
        return None


def _hear_audio(path: str, native_folder: str | None) -> _Heard:
    chunks: list[np.ndarray] = []
    native: list[np.ndarray] = []
    held = 0
    meter: LoudnessMeter | None = None
    stats = DecodeStats()
    for index, chunk in iter_outputs(path, [(MEASURE_RATE, True), (None, False)], stats=stats):
        if index == 0:
            chunks.append(chunk)
            continue
        if (meter is None and native_folder and held + chunk.nbytes <= NATIVE_BYTES
                and (not native or chunk.shape[0] == native[0].shape[0])):
            native.append(chunk)
            held += chunk.nbytes
            continue
        if meter is None:  # a long file, or one whose channels changed: measured here, as it streams
            meter, native = _meter_of(native, stats.source_rate), []
        meter.feed(chunk)
    audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    heard = _Heard(seconds=stats.samples / MEASURE_RATE, audio=audio)
    if native_folder:
        heard.audio = save_array(audio, native_folder) or audio
    if native and native_folder:
        heard.native = save_native(native, stats.source_rate, stats.channels, native_folder)
        if heard.native is None:  # no room in shared memory, or too short: measured here after all
            meter = _meter_of(native, stats.source_rate)
    if meter is not None:
        heard.loudness = meter.result(stats.channels)
    return heard


def _meter_of(chunks: list[np.ndarray], rate: int) -> LoudnessMeter:
    meter = LoudnessMeter(rate)
    for chunk in chunks:
        meter.feed(chunk)
    return meter


def _heard_in_order(paths: list[str], specs: dict[_Group, InputSpec], cancel: CancelToken,
                    workers: int | None, ship_audio: bool = False, native_folder: str | None = None,
                    decoded_samples: bool = True) -> Iterator[_Heard]:
    """Decoded inputs per file, in order; decoding runs in worker processes when there are several files,
    so the models are fed while the next files are decoded."""
    count = workers if workers is not None else 1
    hear = functools.partial(_hear, specs=specs, ship_audio=ship_audio, native_folder=native_folder,
                             decoded_samples=decoded_samples)
    return in_order(hear, paths, count, cancel, ahead=_files_in_flight(count, ship_audio),
                    crashed=lambda _path: _Heard(error="the decoder crashed on this file"), discard=_discard,
                    sequential_below=PARALLEL_ANALYSIS_THRESHOLD)


def _files_in_flight(workers: int, ship_audio: bool) -> int:
    """Files handed to the workers ahead of the one the job needs next: enough that a worker rarely waits
    for a slower file before it to be taken (results are taken in order), few enough to bound memory.
    Where the workers only decode for a GPU, twice as many (each holds about 45 MB of shared memory per
    three-minute track): on an H200 that measured 0.63 and 0.68 of decode-alone against 0.62."""
    return (2 * workers if ship_audio else workers) + 1


def _discard(heard: _Heard) -> None:
    """Remove the shared-memory files of a track that will not be measured."""
    if isinstance(heard.audio, SharedArray):
        heard.audio.remove()
    if heard.native is not None:
        heard.native.remove()
    if heard.raw is not None:
        heard.raw.remove()


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


def _load(name: str, device: str) -> _Loaded:
    model = registry.verify(name, thorough=False)  # ModelError names the install command
    if model.rebuild_hint:
        log.warning(model.rebuild_hint)
    spec = model.manifest
    try:
        input_spec = frontends.input_spec(spec["input"])
    except frontends.UnknownFrontEnd as exc:
        raise registry.ModelError(f"{name}: {exc}") from exc
    outputs = spec.get("outputs", {})
    session = None
    if model.fp16_path is not None and cuda_wanted(device):  # the float16 graph, where it runs on CUDA
        session = make_session(model.fp16_path, device)
        if session.get_providers()[0] != "CUDAExecutionProvider":
            session = None
    if session is None:
        try:  # the app's current manifest says how the model may compute on CUDA
            tf32 = registry.manifest(name).get("cuda_math") == "tf32"
        except registry.ModelError:
            tf32 = False
        session = make_session(model.onnx_path, device, tf32=tf32)
    return _Loaded(name, model.version, model.labels, session, input_spec, spec["input"]["name"],
                   outputs.get("labels"), outputs.get("embedding"), spec["input"].get("mask"))


@dataclass
class _TrackWork:
    """A heard track whose windows are going through the models."""

    row: dict[str, Any]
    heard: _Heard
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
        self.pending: deque[_TrackWork] = deque()

    def add(self, row: dict[str, Any], heard: _Heard) -> list[_TrackWork]:
        self.pending.append(_TrackWork(row, heard, dict.fromkeys(self.groups, 0),
                                       {m.name: [None, None] for m in self.models}, dict.fromkeys(self.groups, 0)))
        return self._run(full_only=True)

    def warm_up(self) -> None:
        """Run each model (and its window front end, on the device) once on a full batch of silence: a GPU
        chooses its kernels (cuDNN tries them all) and sets up its memory on a graph's first run, which the
        job does while its decoding workers start."""
        for group, models in self.groups.items():
            if self.front_ends is not None:
                features = self.front_ends.features(group, np.zeros((self.batch, group.window_samples), np.float32))
            else:
                window = models[0].spec.features(np.zeros(group.window_samples, dtype=np.float32))
                features = np.ascontiguousarray(np.broadcast_to(window.astype(np.float32),
                                                                (self.batch, *window.shape)))
            for model in models:
                _run_model(model, features, [])

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
                short = self.batch - sum(len(p) for p in pieces) if self.full_batches else 0
                if short > 0:
                    pieces.append(np.zeros((short, *pieces[0].shape[1:]), dtype=pieces[0].dtype))
                batch = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
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


def _run_model(model: _Loaded, batch: Any, owners: list[tuple[_TrackWork, int]]) -> None:
    """Run a batch of model inputs: a numpy array, or an OrtValue already on the model's device."""
    names = [n for n in (model.label_output, model.embedding_output) if n]
    # whole windows: nothing is padding (a short tail is zero-filled, as a recording's silence)
    shape = batch.shape if isinstance(batch, np.ndarray) else batch.shape()
    mask = np.zeros(shape[:2], dtype=bool) if model.mask_input else None
    if isinstance(batch, np.ndarray):
        feeds = {model.input_name: batch}
        if model.mask_input:
            feeds[model.mask_input] = mask
        outputs = model.session.run(names, feeds)
    else:
        binding = model.session.io_binding()
        binding.bind_ortvalue_input(model.input_name, batch)
        if model.mask_input:
            binding.bind_cpu_input(model.mask_input, mask)
        for name in names:
            binding.bind_output(name, "cpu")
        model.session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
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
    names = models if models is not None else [  # the default audio models (text encoders have their own job)
        name for name in registry.default_models() if registry.manifest(name).get("kind") != "text-encoder"]
    loaded = [_load(name, device) for name in names]
    provider = loaded[0].session.get_providers()[0] if loaded else "CPUExecutionProvider"
    summary = AnalysisSummary("running", names, device=provider)
    on_gpu = provider == "CUDAExecutionProvider"
    specs = {model.group: model.spec for model in loaded}
    on_device = on_gpu if front_ends_on_device is None else front_ends_on_device
    if workers is None:  # with a GPU the cores are free for decoding; on the CPU the models need them too
        cores = os.cpu_count() or 1
        # the job's own process takes about three cores when it feeds the GPU the front ends' audio (its
        # threads copy the audio over and measure; 13 workers of 16 cores measured faster than 15)
        workers = max(1, cores - (3 if on_device else 1)) if on_gpu else min(4, cores)
    started = time.monotonic()
    # with the front ends on the device, decoding pools start in the measuring thread: the workers'
    # environment is set here, once, before any thread runs (see ``single_threaded_workers``)
    environment = single_threaded_workers() if on_device else contextlib.nullcontext()
    with library.job_lock("analyze"), environment:
        todo, summary.skipped = _todo(library, loaded, limit)
        progress(Progress("analyze", 0, len(todo)))
        native_folder = native_audio_folder() if on_device else None
        heard_files: Any = _heard_in_order([fs_path(bytes(row["path_key"])) for row in todo], specs, cancel, workers,
                                           ship_audio=on_device, native_folder=native_folder,
                                           decoded_samples=decoded_samples)
        batcher: _Batcher | None = None
        stored = 0

        def store(finished: list[_TrackWork]) -> None:
            nonlocal stored
            for work in finished:
                _store_analysis(library, work, loaded, summary)
                stored += 1
                speed = summary.seconds_of_audio / max(time.monotonic() - started, 1e-6)
                progress(Progress("analyze", stored, len(todo), current=work.row["path"],
                                  message=f"{speed:.0f}× real time"))

        try:
            front_ends = None
            if on_device and todo:  # tempo, key and windows are made beside the model runs, in threads of their own
                ready: Future[DeviceFrontEnds] = Future()
                heard_files = _MeasuredAhead(heard_files, ready, list(specs))  # the workers start now
                front_ends = _made_front_ends(ready, specs, "cuda" if on_gpu else "cpu", todo)
            batcher = _Batcher(loaded, BATCH_WINDOWS["cuda" if on_gpu else "cpu"], front_ends, full_batches=on_gpu)
            if on_gpu and todo:
                batcher.warm_up()
            for row, heard in zip(todo, heard_files, strict=False):
                store(batcher.add(row, heard))
            store(batcher.drain())  # also after a cancel: what was heard is kept
        finally:
            heard_files.close()
            if batcher is not None:
                batcher.close()
            if native_folder:
                remove_native_files(native_folder)  # of tracks heard but never measured (a cancel, a failure)
        summary.status = "cancelled" if cancel.cancelled else "completed"
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return summary


# what the decoders of lossless formats hand over, for warming up their graphs (other codecs: float, planar)
_INTEGER_DECODERS = {"flac": ("int16", True), "pcm_s16le": ("int16", True), "pcm_s16be": ("int16", True),
                     "tta": ("int16", True), "alac": ("int16", False), "ape": ("int16", False),
                     "wavpack": ("int16", False), "tak": ("int16", False)}
WARMED_FORMATS = 3  # the commonest formats among the tracks to analyse get their graphs before the first track


def _made_front_ends(ready: Future[DeviceFrontEnds], specs: dict[_Group, InputSpec], device: str,
                     todo: list[dict[str, Any]]) -> DeviceFrontEnds:
    """The front ends' sessions, handed to the measuring threads, then warmed up for the formats the tracks
    to analyse will most likely decode to (while the decoding workers start)."""
    try:
        front_ends = DeviceFrontEnds(specs, device)
    except BaseException as exc:
        ready.set_exception(exc)
        raise
    ready.set_result(front_ends)
    formats = Counter((row["sample_rate"], *_INTEGER_DECODERS.get(row["codec"] or "", ("float32", False)))
                      for row in todo if row["sample_rate"] and resampler.exact(row["sample_rate"], MEASURE_RATE))
    try:
        front_ends.warm_up([key for key, _count in formats.most_common(WARMED_FORMATS)])
    except Exception:  # only a head start: each track's own measuring reports what fails for it
        log.exception("warming up the front ends failed")
    return front_ends


_END = object()
# four threads measuring eight tracks ahead: 0.64 of decode-alone, against 0.60 for three threads four tracks
# ahead (musicnn on an H200)
MEASURED_AHEAD = 8  # tracks measured ahead of the model runs
MEASURE_THREADS = 4  # tracks measured at once: their graphs and copies run beside one another


class _MeasuredAhead:
    """The heard tracks, measured on the device by threads that keep a few tracks ahead: ONNX Runtime
    releases the interpreter while a graph runs, so their graphs and copies, and the waiting for the
    workers, overlap one another and the model runs of the job's thread.

    Its thread starts at once, and with it the decoding workers; the front ends (``front_ends``, resolved
    by the job's thread) are made and warmed up while the workers start."""

    def __init__(self, heard_files: Iterator[_Heard], front_ends: Future[DeviceFrontEnds], groups: list[_Group]
                 ) -> None:
        self._heard_files, self._front_ends, self._groups = heard_files, front_ends, groups
        self._ahead: queue.Queue[Any] = queue.Queue(maxsize=MEASURED_AHEAD)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._measure, name="analysis-measure", daemon=True)
        self._thread.start()

    def __iter__(self) -> _MeasuredAhead:
        return self

    def __next__(self) -> _Heard:
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

    def _measure_one(self, heard: _Heard) -> None:
        _measure_on_device(self._front_ends.result(), heard, self._groups)

    def _measure(self) -> None:
        pending: deque[tuple[_Heard, Future[None]]] = deque()
        try:
            with ThreadPoolExecutor(max_workers=MEASURE_THREADS, thread_name_prefix="analysis-measure") as pool:
                for heard in self._heard_files:
                    pending.append((heard, pool.submit(self._measure_one, heard)))
                    # in order: a track goes on once it and every track before it are measured
                    while pending and (len(pending) > MEASURE_THREADS or pending[0][1].done()):
                        if not self._put(_settled(*pending.popleft())):
                            return
                while pending:
                    if not self._put(_settled(*pending.popleft())):
                        return
        except BaseException as exc:  # the workers' failure is the job's: hand it over
            self._put(exc)
        finally:
            self._heard_files.close()  # type: ignore[attr-defined]
            self._put(_END)


def _settled(heard: _Heard, measuring: Future[None]) -> _Heard:
    exc = measuring.exception()
    if exc is not None:  # one track the graphs trip over never stops the batch
        log.error("measuring a track on the device failed: %s", exc)
        heard.error = f"the audio could not be measured ({type(exc).__name__}: {exc})"
    return heard


def _measure_on_device(front_ends: DeviceFrontEnds, heard: _Heard, groups: list[_Group]) -> None:
    """Loudness, tempo, key and the model windows of a track whose worker handed over its audio."""
    native, heard.native = heard.native, None
    raw, heard.raw = heard.raw, None
    if raw is not None:
        try:
            heard.audio, heard.loudness = front_ends.decoded(raw)  # removes the file, whatever happens
        except Exception:  # e.g. the GPU's memory: the file is decoded again here, and resampled by FFmpeg
            log.exception("measuring %s's decoded samples on the device failed", heard.source)
            again = _hear(heard.source, {}, ship_audio=True) if heard.source else _Heard(error="no audio")
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
    heard.tempo = front_ends.tempo(audio)
    heard.key = front_ends.key(audio)
    heard.inputs = front_ends.cut(audio, groups)
    if groups and not heard.inputs:
        heard.error = "no audio could be decoded from the file"


def _store_analysis(library: Library, work: _TrackWork, models: list[_Loaded], summary: AnalysisSummary) -> None:
    row, heard = work.row, work.heard
    error = heard.error
    loudness, tempo, key = heard.loudness, heard.tempo, heard.key
    now = utc_now()
    audio_key = _audio_key(row)
    with library.transaction() as conn:
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
                if label_sum is not None:
                    labels = json.dumps({label: round(float(p), 5)
                                         for label, p in zip(model.labels, label_sum / count, strict=True)})
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
    if error is None:
        summary.analysed += 1
        summary.seconds_of_audio += heard.seconds
    else:
        summary.errors.append({"path": row["path"], "reason": error})


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
