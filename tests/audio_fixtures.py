"""Real audio files made at test time: a tone encoded with PyAV (FFmpeg), tagged with mutagen."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# name → (file extension, PyAV container format, codec, encoder options)
FORMATS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "mp3": ("mp3", "mp3", "libmp3lame", {}),
    "flac": ("flac", "flac", "flac", {}),
    "ogg": ("ogg", "ogg", "vorbis", {"strict": "experimental"}),
    "opus": ("opus", "ogg", "libopus", {}),
    "m4a": ("m4a", "ipod", "aac", {}),
    "alac": ("m4a", "ipod", "alac", {}),
    "wav": ("wav", "wav", "pcm_s16le", {}),
    "aiff": ("aiff", "aiff", "pcm_s16be", {}),
    "wma": ("wma", "asf", "wmav2", {}),
    "wv": ("wv", "wv", "wavpack", {}),
}

EXPECTED_CONTAINER = {"mp3": "mp3", "flac": "flac", "ogg": "ogg", "opus": "ogg", "m4a": "mp4", "alac": "mp4",
                      "wav": "wav", "aiff": "aiff", "wma": "asf", "wv": "wavpack"}
EXPECTED_CODEC = {"mp3": "mp3", "flac": "flac", "ogg": "vorbis", "opus": "opus", "m4a": "aac", "alac": "alac",
                  "wav": "pcm_s16le", "aiff": "pcm_s16be", "wma": "wmav2", "wv": "wavpack"}


def make_audio(path: Path, fmt: str, seconds: float = 1.0, freq: float = 440.0, rate: int = 44100) -> Path:
    """Encode ``seconds`` of a sine tone into ``path`` in format ``fmt`` (a key of FORMATS)."""
    _ext, container, codec, options = FORMATS[fmt]
    if codec == "libopus":
        rate = 48000
    t = np.arange(int(seconds * rate)) / rate
    signal = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    stereo = np.stack([signal, signal * 0.5])
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "stereo"
        if codec == "wmav2":
            stream.bit_rate = 128000
        if options:
            stream.codec_context.options = options
        frame_size = stream.codec_context.frame_size or 1024
        pts = 0
        for start in range(0, stereo.shape[1], frame_size):
            chunk = np.ascontiguousarray(stereo[:, start:start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = rate
            frame.pts = pts
            frame.time_base = Fraction(1, rate)
            pts += chunk.shape[1]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def audio_file(directory: Path, fmt: str, name: str | None = None, **kwargs: float) -> Path:
    ext = FORMATS[fmt][0]
    return make_audio(directory / f"{name or fmt}.{ext}", fmt, **kwargs)  # type: ignore[arg-type]
