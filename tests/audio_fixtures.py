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
    if FORMATS[fmt][2] == "libopus":
        rate = 48000
    t = np.arange(int(seconds * rate)) / rate
    return encode_signal(path, fmt, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def encode_signal(path: Path, fmt: str, signal: np.ndarray, rate: int) -> Path:
    """Encode a mono float signal into ``path`` (as stereo: the signal left, half of it right)."""
    _ext, container, codec, options = FORMATS[fmt]
    if codec == "libopus" and rate != 48000:
        raise ValueError("Opus needs 48 kHz")
    signal = np.asarray(signal, dtype=np.float32)
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


def drum_pattern(bpm: float, seconds: float, rate: int = 44100, seed: int = 0) -> np.ndarray:
    """A rock beat: kick on 1 and 3, snare on 2 and 4, closed hi-hat on every eighth note."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate) + rate)
    t = np.arange(rate // 2) / rate
    kick = np.sin(2 * np.pi * (50 + 100 * np.exp(-t * 30)) * t) * np.exp(-t * 12)
    eighth = 60.0 / bpm / 2
    for index in range(int(seconds / eighth) + 1):
        start = int(index * eighth * rate)
        if index % 4 == 0:
            hit = kick
        elif index % 4 == 2:
            hit = 0.5 * rng.standard_normal(len(t)) * np.exp(-t * 25)
        else:
            hit = 0.2 * rng.standard_normal(len(t)) * np.exp(-t * 80)
        out[start:start + len(hit)] += hit[: len(out) - start]
    out = out[: int(seconds * rate)]
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def cadence(tonic: int, minor: bool, seconds: float, rate: int = 44100, chord_s: float = 1.0) -> np.ndarray:
    """I–IV–V–I (i–iv–V–i in minor) on ``tonic`` (0 = C), with bass, repeated: harmonic tones, a chord
    every ``chord_s`` seconds."""
    third = 3 if minor else 4
    chords = [(0, third, 7), (5, 5 + third, 12), (7, 11, 14), (0, third, 7)]
    t = np.arange(round(chord_s * rate)) / rate
    pieces = []
    for index in range(int(np.ceil(seconds / chord_s))):
        chord = chords[index % 4]
        notes = [48 + tonic + step for step in chord] + [36 + tonic + chord[0]]
        sound = np.zeros(len(t))
        for midi in notes:
            freq = 440.0 * 2 ** ((midi - 69) / 12)
            sound += sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 7) if freq * k < rate / 2)
        pieces.append(sound * np.exp(-t * 2 / chord_s))
    out = np.concatenate(pieces)[: int(seconds * rate)]
    return (0.5 * out / np.max(np.abs(out))).astype(np.float32)


def encode_planes(path: Path, planes: np.ndarray, rate: int, layout: str, codec: str = "aac",
                  container: str = "ipod") -> Path:
    """Encode [channels, samples] float32 with ``layout`` (e.g. "7.1"). The frames are filled plane by plane:
    PyAV's ``from_ndarray`` expects one plane too many for eight channels."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = layout
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, planes.shape[1], frame_size):
            chunk = np.ascontiguousarray(planes[:, start:start + frame_size], dtype=np.float32)
            frame = av.AudioFrame(format="fltp", layout=layout, samples=chunk.shape[1])
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for channel in range(planes.shape[0]):
                frame.planes[channel].update(chunk[channel].tobytes())
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
