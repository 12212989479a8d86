"""Decode audio files with FFmpeg (PyAV) into mono float32 at a chosen sample rate, in windows.

A two-hour file is never held in memory whole: ``iter_windows`` yields fixed-length windows as the
file is decoded. Damaged packets are skipped (and counted) rather than ending the file early; a
file FFmpeg cannot open or that holds no decodable audio raises ``DecodeError`` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import av
import numpy as np

from jamcaps_desktop.audio.container import open_container

log = logging.getLogger(__name__)


OUTPUT_FRAME = 8192  # samples per chunk handed out (the last one of a file may be shorter)


class DecodeError(Exception):
    """The file cannot be decoded; the message is the plain reason."""


@dataclass
class DecodeStats:
    """What a decode saw: how much audio, and how many damaged packets it skipped."""

    samples: int = 0
    skipped_packets: int = 0
    warnings: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)  # channel names of the stream (FL, FR, FC, LFE…)
    source_rate: int = 0  # the stream's own sample rate
    expected_seconds: float | None = None  # the duration the container states (an estimate for some formats)


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip().lower() or type(exc).__name__


def iter_samples(path: str, sample_rate: int, *, max_seconds: float | None = None,
                 stats: DecodeStats | None = None, mono: bool = True) -> Iterator[np.ndarray]:
    """Float32 chunks at ``sample_rate``, in file order, as they are decoded: mono (the channels'
    mean), or with ``mono=False`` [channels, samples] arrays."""
    for _index, chunk in iter_outputs(path, [(sample_rate, mono)], max_seconds=max_seconds, stats=stats):
        yield chunk


def iter_frames(path: str, stats: DecodeStats | None = None) -> Iterator[av.AudioFrame]:
    """The decoded frames of the file's first audio stream, in file order, their timestamps dropped (so
    that what follows them goes by the samples, not by damaged timestamps). Damaged packets are skipped
    and counted; a decoding error after the first samples ends the file there, with a warning in
    ``stats``; a file with nothing decodable raises ``DecodeError``."""
    stats = stats if stats is not None else DecodeStats()
    try:
        container = open_container(path)
    except (av.error.FFmpegError, OSError, EOFError) as exc:
        raise DecodeError(f"the file cannot be opened for decoding ({_reason(exc)})") from exc
    decoded = 0
    try:
        if not container.streams.audio:
            raise DecodeError("the file has no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise DecodeError("no decoder for this audio format")
        stats.source_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        if stream.duration and stream.time_base:
            stats.expected_seconds = float(stream.duration * stream.time_base)
        elif container.duration:
            stats.expected_seconds = container.duration / av.time_base
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except (av.error.InvalidDataError, av.error.UndefinedError, ValueError) as exc:
                stats.skipped_packets += 1
                if stats.skipped_packets <= 3:
                    log.warning("%s: skipped a damaged packet (%s)", path, _reason(exc))
                continue
            for frame in frames:
                frame.pts = None
                decoded += frame.samples
                yield frame
    except av.error.FFmpegError as exc:
        if decoded == 0:
            raise DecodeError(f"the audio cannot be decoded ({_reason(exc)})") from exc
        stats.warnings.append(f"decoding stopped early: {_reason(exc)}")
        log.warning("%s: decoding stopped early (%s)", path, _reason(exc))
    finally:
        container.close()
    if decoded == 0:
        raise DecodeError("no audio could be decoded from the file")


def iter_outputs(path: str, outputs: list[tuple[int | None, bool]], *, max_seconds: float | None = None,
                 stats: DecodeStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the file once and resample it to each of ``outputs`` (sample rate, mono): yields
    (output index, chunk) in file order, each output's chunks as ``iter_samples`` gives them; a rate
    of None keeps the stream's own (``stats.source_rate``). One decode feeding several consumers (models
    at 16 kHz, loudness at the file's rate) costs one decode."""
    stats = stats if stats is not None else DecodeStats()
    converter = _Converter(outputs, stats, max_seconds)
    # decoded frames (often a thousand samples or so) are gathered into blocks first: converting and
    # resampling a few thousand samples at a time costs far less per sample
    fifo = av.AudioFifo()
    shape: tuple[str, str, int] | None = None  # the format, layout and rate of the frames in the FIFO
    frames = iter_frames(path, stats)
    try:
        for frame in frames:
            current = (frame.format.name, frame.layout.name, frame.sample_rate)
            if current != shape:
                if shape is not None:
                    # the stream changed layout or rate mid-file (joined recordings): convert what the old
                    # format left, finish the resamplers, and carry on with the new format (a FIFO must
                    # never be given frames of another format: PyAV does not always refuse them)
                    if fifo.samples:
                        yield from converter.block(fifo.read())
                    yield from converter.finish()
                    fifo = av.AudioFifo()
                shape = current
            fifo.write(frame)
            while fifo.samples >= BLOCK_SAMPLES:
                yield from converter.block(fifo.read(BLOCK_SAMPLES))
            if converter.full():
                return
        if fifo.samples:
            yield from converter.block(fifo.read())
        yield from converter.finish()
    except av.error.FFmpegError as exc:  # converting, rather than decoding, failed
        if stats.samples == 0:
            raise DecodeError(f"the audio cannot be decoded ({_reason(exc)})") from exc
        stats.warnings.append(f"decoding stopped early: {_reason(exc)}")
        log.warning("%s: decoding stopped early (%s)", path, _reason(exc))
    finally:
        frames.close()
    if stats.samples == 0:
        raise DecodeError("no audio could be decoded from the file")


BLOCK_SAMPLES = 8192  # decoded samples gathered before they are converted and resampled
_MONO_GAIN = {"mono": 1.0, "stereo": float(np.float32(1 / np.sqrt(2)))}


class _Converter:
    """Turns blocks of decoded audio into each output's chunks: float32 at the output's rate, mono or
    [channels, samples]; counts, limits and describes what it hands out in ``stats``.

    Mono is the plain mean of the channels. For mono and stereo sources FFmpeg's resampler mixes down
    itself (before resampling: half the work), and its stereo mix, (L + R)/√2, is scaled back to the
    mean; other layouts are resampled channel by channel and averaged, as FFmpeg's own down-mix of them
    weighs the channels differently."""

    def __init__(self, outputs: list[tuple[int | None, bool]], stats: DecodeStats, max_seconds: float | None) -> None:
        self.outputs, self.stats, self.max_seconds = outputs, stats, max_seconds
        self.resamplers: list[av.AudioResampler | None] = [None] * len(outputs)
        self.gains: list[float | None] = [None] * len(outputs)
        self.produced = [0] * len(outputs)

    def _limit(self, index: int) -> int | None:
        if not self.max_seconds:
            return None
        rate = self.outputs[index][0] or self.stats.source_rate
        return int(self.max_seconds * rate)

    def full(self) -> bool:
        limit = self._limit(0)
        return limit is not None and self.produced[0] >= limit

    def block(self, frame: av.AudioFrame) -> Iterator[tuple[int, np.ndarray]]:
        if not self.stats.channels:
            self.stats.channels = [channel.name for channel in frame.layout.channels]
        for index, (rate, mono) in enumerate(self.outputs):
            if rate is None:
                self.stats.source_rate = frame.sample_rate or self.stats.source_rate  # HE-AAC doubles its own
            if rate is None and not mono and frame.format.name == "fltp":
                yield from self._emit(index, [frame])  # already what is wanted: no conversion
                continue
            if self.resamplers[index] is None:
                gain = _MONO_GAIN.get(frame.layout.name) if mono else None
                layout = "mono" if gain is not None else None
                self.gains[index] = gain
                self.resamplers[index] = av.AudioResampler(format="fltp", layout=layout, rate=rate,
                                                           frame_size=OUTPUT_FRAME)
            yield from self._emit(index, self.resamplers[index].resample(frame))

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        """What the resamplers still hold; the next block starts new ones."""
        for index, resampler in enumerate(self.resamplers):
            if resampler is not None:
                yield from self._emit(index, resampler.resample(None))
        self.resamplers = [None] * len(self.outputs)

    def _emit(self, index: int, frames: list[av.AudioFrame]) -> Iterator[tuple[int, np.ndarray]]:
        mono, limit, gain = self.outputs[index][1], self._limit(index), self.gains[index]
        for out in frames:
            planes = frame_planes(out)
            if not mono:
                chunk = np.ascontiguousarray(planes, dtype=np.float32)
            elif gain is not None:  # mixed down by the resampler
                chunk = planes[0] if gain == 1.0 else planes[0] * np.float32(gain)
            else:
                chunk = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
            chunk = np.ascontiguousarray(chunk, dtype=np.float32)
            size = chunk.shape[-1]
            if limit is not None and self.produced[index] + size > limit:
                chunk = chunk[..., : limit - self.produced[index]]
                size = chunk.shape[-1]
            self.produced[index] += size
            if index == 0:
                self.stats.samples += size
            if size:
                yield index, chunk


def frame_planes(frame: av.AudioFrame) -> np.ndarray:
    """[channels, samples] float32 of a planar float frame, read plane by plane. (PyAV's ``to_ndarray``
    counts one plane too many for eight channels, 7.1 audio, and crashes the process reading it.)"""
    count, channels = frame.samples, len(frame.layout.channels)
    planes = frame.planes
    return np.stack([np.frombuffer(planes[channel], dtype=np.float32, count=count) for channel in range(channels)])


def iter_windows(path: str, sample_rate: int, window_s: float, *, hop_s: float | None = None,
                 max_seconds: float | None = None, pad_last: bool = True,
                 stats: DecodeStats | None = None) -> Iterator[np.ndarray]:
    """Windows of ``window_s`` seconds every ``hop_s`` seconds (default: back to back).

    The last window is zero-padded to full length when ``pad_last`` (a track shorter than one window
    still gives one window); otherwise a partial last window is dropped.
    """
    size = round(window_s * sample_rate)
    hop = round((hop_s or window_s) * sample_rate)
    if size <= 0 or hop <= 0:
        raise ValueError("window and hop must be positive")
    buffer = np.zeros(0, dtype=np.float32)
    emitted = False
    for chunk in iter_samples(path, sample_rate, max_seconds=max_seconds, stats=stats):
        buffer = np.concatenate([buffer, chunk]) if len(buffer) else chunk
        while len(buffer) >= size:
            yield buffer[:size].copy()
            emitted = True
            buffer = buffer[hop:]
    if len(buffer) and pad_last and (not emitted or len(buffer) > size - hop):
        window = np.zeros(size, dtype=np.float32)
        window[: len(buffer)] = buffer[:size]
        yield window


def decode(path: str, sample_rate: int, *, max_seconds: float | None = None) -> np.ndarray:
    """The whole file (or its first ``max_seconds``) as one mono float32 array."""
    chunks = list(iter_samples(path, sample_rate, max_seconds=max_seconds))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
