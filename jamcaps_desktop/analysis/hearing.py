"""What the analysis' decoding workers do with one file: decode it once, and either compute every model
input and measurement (the CPU), or hand the audio over for the front ends on the models' device.

A module of its own, and light to import: each worker process imports it as it starts, before it decodes
its first file, and the models' device waits for that first file."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from jamcaps_desktop.analysis.native_audio import (
    NATIVE_BYTES,
    RAW_BYTES,
    RAW_FORMATS,
    NativeAudio,
    RawAudio,
    RawWriter,
    SharedArray,
    save_array,
    save_native,
)
from jamcaps_desktop.audio import resampler
from jamcaps_desktop.audio.decode import DecodeError, DecodeStats, iter_frames, iter_outputs
from jamcaps_desktop.audio.loudness import Loudness, LoudnessMeter, step_samples

if TYPE_CHECKING:
    from jamcaps_desktop.audio.frontends import InputSpec
    from jamcaps_desktop.audio.key import Key
    from jamcaps_desktop.audio.tempo import Tempo

log = logging.getLogger(__name__)

MEASURE_RATE = 16000  # tempo and key are measured on the 16 kHz decode
RAW_BLOCK = 65536  # decoded samples a worker gathers before it writes them to shared memory
RAW_ROOM_MARGIN = 1.1  # a planar channel's room in shared memory: the stated duration times this, and 2 s


@dataclass
class Heard:
    """What a worker extracts from one file: model inputs per group, and the signal measurements."""

    inputs: dict[Any, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    loudness: Loudness | None = None
    tempo: Tempo | None = None
    key: Key | None = None
    error: str | None = None
    audio: np.ndarray | SharedArray | None = None  # the 16 kHz mono audio, where the front ends run on the GPU
    native: NativeAudio | None = None  # the audio at its own rate, for the loudness on the models' device
    raw: RawAudio | None = None  # the decoded samples as they are, resampled and measured on the models' device
    source: str | None = None  # the file, where it may have to be decoded again (the device failed on ``raw``)


def hear(path: str, specs: dict[Any, InputSpec], ship_audio: bool = False,
          native_folder: str | None = None, decoded_samples: bool = True) -> Heard:
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
        return Heard(error=str(exc))
    except Exception as exc:  # one file the decoding trips over never stops the batch
        log.exception("decoding %s failed", path)
        return Heard(error=f"the audio could not be decoded ({type(exc).__name__}: {exc})")


def _hear_features(path: str, specs: dict[Any, InputSpec]) -> Heard:
    # imported here, not with the module: the workers that only decode for a GPU never need them (and
    # SciPy's FFT, which they bring, adds a few tenths of a second to every worker's start)
    from jamcaps_desktop.audio.frontends import Windower
    from jamcaps_desktop.audio.key import PitchProfile
    from jamcaps_desktop.audio.key import estimate as estimate_key
    from jamcaps_desktop.audio.tempo import OnsetEnvelope
    from jamcaps_desktop.audio.tempo import estimate as estimate_tempo

    heard = Heard()
    rates = [MEASURE_RATE, *sorted({spec.sample_rate for spec in specs.values()} - {MEASURE_RATE})]
    outputs: list[tuple[int | None, bool]] = [(rate, True) for rate in rates] + [(None, False)]  # loudness: own rate
    loudness_output = len(outputs) - 1
    windowers = {group: Windower(group.window_samples) for group in specs}
    by_rate = {index: [g for g in specs if specs[g].sample_rate == rate] for index, rate in enumerate(rates)}
    features: dict[Any, list[np.ndarray]] = {group: [] for group in specs}
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
        return Heard(error="no audio could be decoded from the file")
    heard.seconds = stats.samples / MEASURE_RATE
    heard.tempo = estimate_tempo(onsets.envelope())
    heard.key = estimate_key(pitches.profile(), pitches.frames)
    heard.loudness = meter.result(stats.channels) if meter else None
    return heard


def _hear_raw(path: str, native_folder: str) -> Heard | None:
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
    return Heard(seconds=resampler.output_length(rate, MEASURE_RATE, raw.length) / MEASURE_RATE, raw=raw,
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


def _hear_audio(path: str, native_folder: str | None) -> Heard:
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
    heard = Heard(seconds=stats.samples / MEASURE_RATE, audio=audio)
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


def discard(heard: Heard) -> None:
    """Remove the shared-memory files of a track that will not be measured."""
    if isinstance(heard.audio, SharedArray):
        heard.audio.remove()
    if heard.native is not None:
        heard.native.remove()
    if heard.raw is not None:
        heard.raw.remove()
