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


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip().lower() or type(exc).__name__


def iter_samples(path: str, sample_rate: int, *, max_seconds: float | None = None,
                 stats: DecodeStats | None = None, mono: bool = True) -> Iterator[np.ndarray]:
    """Float32 chunks at ``sample_rate``, in file order, as they are decoded: mono (the channels'
    mean), or with ``mono=False`` [channels, samples] arrays."""
    for _index, chunk in iter_outputs(path, [(sample_rate, mono)], max_seconds=max_seconds, stats=stats):
        yield chunk


def iter_outputs(path: str, outputs: list[tuple[int | None, bool]], *, max_seconds: float | None = None,
                 stats: DecodeStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the file once and resample it to each of ``outputs`` (sample rate, mono): yields
    (output index, chunk) in file order, each output's chunks as ``iter_samples`` gives them; a rate
    of None keeps the stream's own (``stats.source_rate``). One decode feeding several consumers (models
    at 16 kHz, loudness at the file's rate) costs one decode."""
    stats = stats if stats is not None else DecodeStats()
    try:
        container = open_container(path)
    except (av.error.FFmpegError, OSError, EOFError) as exc:
        raise DecodeError(f"the file cannot be opened for decoding ({_reason(exc)})") from exc
    try:
        if not container.streams.audio:
            raise DecodeError("the file has no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise DecodeError("no decoder for this audio format")
        # Channels are kept through resampling and averaged here: FFmpeg's own down-mix to mono scales
        # stereo by 1/√2 per channel (+3 dB against the plain mean that analysis models were trained on).
        stats.source_rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        # output frames of a few thousand samples: fewer, larger chunks for everything downstream
        resamplers = [av.AudioResampler(format="fltp", rate=rate, frame_size=OUTPUT_FRAME) for rate, _mono in outputs]
        passthrough = [False] * len(outputs)  # native-rate outputs of float-planar streams skip the resampler
        limits = [int(max_seconds * (rate or stats.source_rate)) if max_seconds else None for rate, _mono in outputs]
        produced = [0] * len(outputs)

        def emit(index: int, frames: list[av.AudioFrame]) -> Iterator[tuple[int, np.ndarray]]:
            mono, limit = outputs[index][1], limits[index]
            for out in frames:
                if outputs[index][0] is None and out.sample_rate:
                    stats.source_rate = out.sample_rate  # the rate frames really come at (HE-AAC doubles its own)
                planes = out.to_ndarray()  # [channels, samples] for a planar format
                if not stats.channels:
                    stats.channels = [channel.name for channel in out.layout.channels]
                if mono:
                    chunk = planes.mean(axis=0, dtype=np.float32) if planes.shape[0] > 1 else planes[0]
                    chunk = np.ascontiguousarray(chunk, dtype=np.float32)
                else:
                    chunk = np.ascontiguousarray(planes, dtype=np.float32)
                size = chunk.shape[-1]
                if limit is not None and produced[index] + size > limit:
                    chunk = chunk[..., : limit - produced[index]]
                    size = chunk.shape[-1]
                produced[index] += size
                if index == 0:
                    stats.samples += size
                if size:
                    yield index, chunk

        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except (av.error.InvalidDataError, av.error.UndefinedError, ValueError) as exc:
                stats.skipped_packets += 1
                if stats.skipped_packets <= 3:
                    log.warning("%s: skipped a damaged packet (%s)", path, _reason(exc))
                continue
            for frame in frames:
                frame.pts = None  # let the resamplers follow the samples, not damaged timestamps
                if not stats.samples and not any(passthrough):
                    passthrough = [rate is None and frame.format.name == "fltp" for rate, _mono in outputs]
                for index in range(len(resamplers)):
                    if passthrough[index] and frame.format.name == "fltp":
                        yield from emit(index, [frame])
                        continue
                    try:
                        converted = resamplers[index].resample(frame)
                    except ValueError:
                        # the stream changed layout or rate mid-file (joined recordings): finish what the old
                        # resampler holds, then carry on with one made for the new frames
                        yield from emit(index, resamplers[index].resample(None))
                        rate = outputs[index][0]
                        resamplers[index] = av.AudioResampler(format="fltp", rate=rate, frame_size=OUTPUT_FRAME)
                        converted = resamplers[index].resample(frame)
                    yield from emit(index, converted)
            if limits[0] is not None and produced[0] >= limits[0]:
                return
        for index, resampler in enumerate(resamplers):
            yield from emit(index, resampler.resample(None))
    except av.error.FFmpegError as exc:
        if stats.samples == 0:
            raise DecodeError(f"the audio cannot be decoded ({_reason(exc)})") from exc
        stats.warnings.append(f"decoding stopped early: {_reason(exc)}")
        log.warning("%s: decoding stopped early (%s)", path, _reason(exc))
    finally:
        container.close()
    if stats.samples == 0:
        raise DecodeError("no audio could be decoded from the file")


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
