"""The analysis' front ends on the models' device: model inputs, tempo, key and loudness of a track.

Used when the models run on a GPU: the decoding workers then hand over each track's decoded samples as
they are (``native_audio``), which are resampled to 16 kHz and measured for loudness here; the log-mel
or fbank of every window, the tempo's onset envelope and the key's pitch profile follow, all computed by
the graphs of ``audio.frontend_graphs``, on the GPU. (Tracks the device does not take come resampled,
with their audio at their own rate for the loudness.) The window features never leave the device: the front end's
session leaves them there for the models' (``engine.run_values``, which makes its copies between host and
GPU inside the run, where the other threads go on).

Long tracks are measured a stretch at a time (about 80 s of frames for the tempo, 130 s for the key),
the stretches overlapping by what one frame needs, so that every value is the one the streaming numpy
measurement would have made; the loudness takes one run per track (``native_audio`` lays it out).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from jamcaps_desktop.analysis.native_audio import NativeAudio, RawAudio
from jamcaps_desktop.audio import frontend_graphs as graphs
from jamcaps_desktop.audio import key as key_module
from jamcaps_desktop.audio import resampler
from jamcaps_desktop.audio import tempo as tempo_module
from jamcaps_desktop.audio.frontends import InputSpec, cut_windows
from jamcaps_desktop.audio.key import Key
from jamcaps_desktop.audio.key import estimate as estimate_key
from jamcaps_desktop.audio.loudness import Loudness, loudness_of_steps
from jamcaps_desktop.audio.loudness_blocks import block_plan, separation
from jamcaps_desktop.audio.tempo import Tempo
from jamcaps_desktop.audio.tempo import estimate as estimate_tempo
from jamcaps_desktop.models.engine import make_session, run_values

log = logging.getLogger(__name__)

ONSET_STRETCH = 8192  # onset frames per run (82 s)
PITCH_STRETCH = 512  # key frames per run (131 s)


class DeviceFrontEnds:
    """Sessions for the window front ends of the given model inputs, and for the tempo and key graphs."""

    def __init__(self, specs: dict[Any, InputSpec], device: str, built: GraphsAhead | None = None) -> None:
        """``built``: the graphs, built ahead in a thread of their own (else they are built here)."""
        self._built = built or GraphsAhead({}, [], start=False)
        # one after the other: ONNX Runtime's CUDA provider, starting in one thread while another makes a
        # session or runs a graph for the first time, failed on an H100 ("operation not permitted when
        # stream is capturing"), and making them side by side gained nothing
        self.windows: dict[Any, Any] = {
            group: make_session(self._built.graph(("window", group), functools.partial(_window_graph, spec)),
                                device, name=f"the {spec.front_end.name} front end", varying_shapes=True)
            for group, spec in specs.items()}
        self.onsets = make_session(self._built.graph(("onset",), _onset_graph), device, name="the onset front end",
                                   varying_shapes=True)
        self.pitches = make_session(self._built.graph(("pitch",), _pitch_graph), device, name="the key front end",
                                    varying_shapes=True)
        provider = self.onsets.get_providers()[0]
        self.device_type = "cuda" if provider == "CUDAExecutionProvider" else "cpu"
        self._device = device
        # sessions made when first needed (tracks are measured in several threads): once each, one at a time
        # (see above)
        self._sessions: dict[Any, Any] = {}
        self._making_lock = threading.Lock()

    def _session(self, key: Any, maker: Callable[[], Any]) -> Any:
        """The session under ``key``, made by ``maker`` by the first thread that asks while the others wait
        (a session that fails to be made is not kept: the next track tries again)."""
        session = self._sessions.get(key)
        if session is None:
            with self._making_lock:
                session = self._sessions.get(key)
                if session is None:
                    session = self._sessions[key] = maker()
        return session

    def features(self, group: Any, batch: np.ndarray, shrink: bool = False) -> Any:
        """The model input of a batch of windows, as an OrtValue on the device (``shrink``: see
        ``engine.run_options``)."""
        return run_values(self.windows[group], {graphs.AUDIO: _float32(batch)}, {graphs.FEATURES: self.device_type},
                          shrink)[0]

    def cut(self, audio: np.ndarray, groups: list[Any]) -> dict[Any, np.ndarray]:
        """Each group's windows of a track's audio (views where they can be)."""
        out = {}
        for group in groups:
            windows = cut_windows(audio, group.window_samples)
            if len(windows):
                out[group] = windows
        return out

    def loudness(self, native: NativeAudio) -> Loudness:
        """The integrated loudness of a track's channels at their own rate, laid out by ``save_native``
        (its file is removed)."""
        try:
            session = self._session(("loudness", native.rate), lambda: make_session(
                graphs.loudness_graph(native.rate).SerializeToString(), self._device, name="the loudness front end",
                varying_shapes=True))
            plan = native.plan
            blocks = native.array.take().reshape(-1, plan.block)
            power = session.run(None, {graphs.LOUDNESS_BLOCKS: blocks})[0]
            return _loudness(power, native.steps, native.rate, native.names, native.peak)
        finally:
            native.remove()

    def prepare(self, formats: list[tuple[int, str, bool]]) -> None:
        """Make the decoded-audio sessions of the given formats (rate, sample type, interleaved) before the
        measuring threads start: a session made in one thread while another runs a graph for the first time
        can stop ONNX Runtime's CUDA provider. Nothing is run: the measuring threads' first tracks load the
        graphs' kernels, beside the models' warm-up (which they used to wait for: 0.5 s of a job's start on
        an H100)."""
        for key in formats:
            self._decoded_session(key)

    def warm_up(self, formats: list[tuple[int, str, bool]]) -> None:
        """Run the decoded-audio graphs of ``formats``, and the tempo's and key's, once on a few seconds of
        silence: a graph's first run loads the kernels it uses, which a measuring thread's first track would
        otherwise wait for. For sessions made ahead of any job (``analyze.get_ready``), not in a job, where
        the first tracks do it beside the models' warm-up."""
        seconds = 3
        for rate, dtype, interleaved in formats:
            shape = (seconds * rate, 2) if interleaved else (2, seconds * rate)
            session = self._decoded_session((rate, dtype, interleaved))
            run_values(session, {graphs.RAW: np.zeros(shape, dtype=dtype)},
                       {graphs.AUDIO_HOST: "cpu", graphs.STEP_POWER: "cpu", graphs.PEAK: "cpu"})
        audio = self.on_device(np.zeros(seconds * graphs.MODEL_RATE, dtype=np.float32))
        self.tempo(audio)
        self.key(audio)

    def _decoded_session(self, key: tuple[int, str, bool]) -> Any:
        return self._session(("decoded", key), lambda: make_session(
            self._built.graph(("decoded", key), functools.partial(_decoded_graph, key)), self._device,
            name="the decoded-audio front end", varying_shapes=True))

    def decoded(self, raw: RawAudio) -> tuple[np.ndarray, Loudness]:
        """The 16 kHz mono audio and the loudness of a track's decoded samples (its file is removed)."""
        audio, _on_device, loudness = self._decoded(raw, keep=False)
        return audio, loudness

    def decoded_here_and_there(self, raw: RawAudio) -> tuple[np.ndarray, Any, Loudness]:
        """``decoded``, with the 16 kHz audio also as it stays on the device (an OrtValue, for ``tempo`` and
        ``key``: the track then crosses to the device once, not once per measurement)."""
        return self._decoded(raw, keep=True)

    def _decoded(self, raw: RawAudio, keep: bool) -> tuple[np.ndarray, Any, Loudness]:
        fetches = {graphs.AUDIO_HOST: "cpu", graphs.STEP_POWER: "cpu", graphs.PEAK: "cpu"}
        if keep:
            fetches[graphs.AUDIO] = self.device_type
        try:
            session = self._decoded_session((raw.rate, raw.dtype, raw.interleaved))
            here, power, peak, *kept = run_values(session, {graphs.RAW: raw.array.take()}, fetches)
            audio = here.numpy()  # a view of the run's host output (a copy of it on older ONNX Runtime)
        finally:
            raw.remove()
        length = resampler.output_length(raw.rate, graphs.MODEL_RATE, raw.length)
        steps = raw.length // block_plan(raw.rate).step
        loudness = _loudness(power.numpy(), steps, raw.rate, raw.names, float(peak.numpy()))
        return audio[:length], kept[0] if kept else None, loudness

    def on_device(self, audio: np.ndarray) -> Any:
        """A track's 16 kHz audio copied to the device once, for ``tempo`` and ``key``."""
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(_float32(audio), self.device_type, 0)

    def tempo(self, audio: Any, length: int | None = None) -> Tempo | None:
        """The tempo of a track's 16 kHz audio (an array, or an OrtValue from ``on_device`` or
        ``decoded_here_and_there``, of which the first ``length`` samples are the track)."""
        return estimate_tempo(self.onset_envelope(audio, length))

    def key(self, audio: Any, length: int | None = None) -> Key | None:
        """The key of a track's 16 kHz audio (as for ``tempo``)."""
        profile, frames = self.pitch_profile(audio, length)
        return estimate_key(profile, frames)

    def onset_envelope(self, audio: Any, length: int | None = None) -> np.ndarray:
        """``tempo.OnsetEnvelope``'s envelope of a whole track."""
        signal, length = self._signal(audio, length)
        fft, hop, lead = tempo_module.FFT, tempo_module.HOP, tempo_module.FFT // 2
        total = length + lead
        if total < fft:
            return np.zeros(0, dtype=np.float32)
        frames = 1 + (total - fft) // hop
        pieces: list[np.ndarray] = []
        last: np.ndarray | None = None
        for first in range(0, frames, ONSET_STRETCH):
            count = min(ONSET_STRETCH, frames - first)
            start = first * hop - lead  # where the stretch's first frame starts, in the track's samples
            end = start + (count - 1) * hop + fft
            rises, first_bands, last_bands = self._run_stretch(self.onsets, signal, max(start, 0), end,
                                                               (max(-start, 0), 0))
            head = np.float32(0.0) if last is None else np.maximum(first_bands - last, 0.0).mean(dtype=np.float32)
            pieces += [np.array([head], dtype=np.float32), rises]
            last = last_bands
        return np.concatenate(pieces)

    def pitch_profile(self, audio: Any, length: int | None = None) -> tuple[np.ndarray, int]:
        """``key.PitchProfile``'s profile of a whole track, and its frame count."""
        signal, length = self._signal(audio, length)
        fft, hop = key_module.FFT, key_module.HOP
        if length < fft:
            return np.zeros(12), 0
        frames = 1 + (length - fft) // hop
        profile = np.zeros(12)
        for first in range(0, frames, PITCH_STRETCH):
            count = min(PITCH_STRETCH, frames - first)
            profile += self._run_stretch(self.pitches, signal, first * hop, (first + count - 1) * hop + fft)[0]
        return profile, frames

    def _signal(self, audio: Any, length: int | None) -> tuple[Any, int]:
        if isinstance(audio, np.ndarray):
            audio = self.on_device(audio)
        return audio, audio.shape()[0] if length is None else length

    def _run_stretch(self, session: Any, signal: Any, start: int, end: int,
                     lead: tuple[int, int] | None = None) -> list[np.ndarray]:
        """One run of the tempo or key graph over samples ``start:end`` of a track on the device."""
        feeds = {graphs.SIGNAL: signal, graphs.STRETCH_START: np.array([start], dtype=np.int64),
                 graphs.STRETCH_END: np.array([end], dtype=np.int64)}
        if lead is not None:
            feeds[graphs.STRETCH_LEAD] = np.array(lead, dtype=np.int64)
        outputs = run_values(session, feeds, {output.name: "cpu" for output in session.get_outputs()})
        return [output.numpy() for output in outputs]


class GraphsAhead:
    """The front ends' graphs, serialised in a thread of their own while the job does other things.

    Building them is mostly numpy on the CPU (the key graph's DFT bases): up to a second of a job's
    start on a slow processor, which this lets overlap the making of the models'
    sessions (ONNX Runtime lets other threads run while it makes one). ``graph`` hands a graph over once,
    waiting for it where its building is under way, and builds one it was not given itself."""

    def __init__(self, specs: dict[Any, InputSpec], formats: list[tuple[int, str, bool]], start: bool = True
                 ) -> None:
        """``formats``: the decoded-audio graphs (rate, sample type, interleaved) to build, after the others."""
        self._futures: dict[Any, Future[bytes]] = {}
        self._lock = threading.Lock()
        if not start:
            return
        builds: list[tuple[Any, Callable[[], bytes]]] = [
            *((("window", group), functools.partial(_window_graph, spec)) for group, spec in specs.items()),
            (("onset",), _onset_graph), (("pitch",), _pitch_graph),
            *((("decoded", key), functools.partial(_decoded_graph, key)) for key in formats)]
        queued = []
        for key, build in builds:
            self._futures[key] = Future()
            queued.append((self._futures[key], build))
        threading.Thread(target=_build_all, args=(queued,), name="front-end-graphs", daemon=True).start()

    def graph(self, key: Any, build: Callable[[], bytes]) -> bytes:
        """The serialised graph under ``key``: the one built ahead (once), else ``build()``."""
        with self._lock:
            future = self._futures.pop(key, None)
        if future is None or future.cancel():  # not built ahead, or not started yet: built here, now
            return build()
        try:
            return future.result()
        except Exception:
            log.exception("building a front-end graph ahead failed")
            return build()

    def close(self) -> None:
        """Stop building what has not been started (the job ended, or failed, before it needed them)."""
        with self._lock:
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            future.cancel()


def _build_all(queued: list[tuple[Future[bytes], Callable[[], bytes]]]) -> None:
    for future, build in queued:
        if not future.set_running_or_notify_cancel():  # taken (and built) by the job before its turn came
            continue
        try:
            future.set_result(build())
        except BaseException as exc:  # handed to the job, which builds the graph again and reports
            future.set_exception(exc)


def _window_graph(spec: InputSpec) -> bytes:
    """The window front end of a model input."""
    build = graphs.WINDOW_GRAPHS[spec.front_end.name]
    model = build(spec.window_samples, spec.frames) if spec.frames else build(spec.window_samples)
    return model.SerializeToString()


def _onset_graph() -> bytes:
    return graphs.onset_graph().SerializeToString()


def _pitch_graph() -> bytes:
    return graphs.pitch_graph().SerializeToString()


def _decoded_graph(key: tuple[int, str, bool]) -> bytes:
    return graphs.decoded_audio_graph(*key).SerializeToString()


def _loudness(power: np.ndarray, steps: int, rate: int, names: list[str], peak: float) -> Loudness:
    """The loudness from the loudness graph's step powers: each channel's steps, then the filter's rest."""
    plan = block_plan(rate)
    stride = steps + separation(plan) // plan.per_step
    per_channel = np.stack([power[channel * stride:channel * stride + steps] for channel in range(len(names))], axis=1)
    return loudness_of_steps(per_channel.astype(np.float64), names, peak)


def _float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)
