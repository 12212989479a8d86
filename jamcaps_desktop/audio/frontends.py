"""The spectral front ends a model manifest can name, and a streaming windower that feeds them.

A manifest's ``input`` says which front end its model takes (``front_end``), at what sample rate, in
windows of how many seconds and, optionally, how many frames; the analysis cuts the decoded audio into
such windows and turns each into the model's input with the front end named here. A new encoder with
one of these front ends needs a manifest only; a new front end needs one entry in ``FRONT_ENDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from jamcaps_desktop.audio.features import beats_fbank, musicnn_melspec


@dataclass(frozen=True)
class FrontEnd:
    name: str
    sample_rate: int
    compute: Callable[[np.ndarray], np.ndarray]  # window samples -> [frames, bins]
    description: str


FRONT_ENDS: dict[str, FrontEnd] = {
    "musicnn-logmel": FrontEnd("musicnn-logmel", 16000, musicnn_melspec,
                               "96-band log-mel (librosa's Slaney mel, 512-point FFT, hop 256, log10(1 + 10000·mel))"),
    "kaldi-fbank-128": FrontEnd("kaldi-fbank-128", 16000, beats_fbank,
                                "128-bin Kaldi fbank (25 ms / 10 ms, ×2^15), normalised as BEATs is trained"),
}


@dataclass(frozen=True)
class InputSpec:
    """What one model needs from the audio: read from its manifest's ``input``."""

    front_end: FrontEnd
    window_s: float
    frames: int | None  # the model's fixed frame count, or None for variable length

    @property
    def sample_rate(self) -> int:
        return self.front_end.sample_rate

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    def features(self, window: np.ndarray) -> np.ndarray:
        out = self.front_end.compute(window)
        return out[: self.frames] if self.frames else out


class UnknownFrontEnd(ValueError):
    pass


def input_spec(manifest_input: dict[str, Any]) -> InputSpec:
    name = manifest_input["front_end"]
    if name not in FRONT_ENDS:
        raise UnknownFrontEnd(f"the {name} front end is not available in this version "
                              f"(known: {', '.join(sorted(FRONT_ENDS))})")
    front_end = FRONT_ENDS[name]
    if int(manifest_input.get("sample_rate", front_end.sample_rate)) != front_end.sample_rate:
        raise UnknownFrontEnd(f"the {name} front end works at {front_end.sample_rate} Hz only")
    frames = manifest_input.get("frames")
    return InputSpec(front_end, float(manifest_input["window_s"]), int(frames) if frames else None)


class Windower:
    """Cuts a stream of chunks into back-to-back windows of ``size`` samples. A partial last window is
    zero-padded when it holds at least half a window (a track shorter than one window still gives one);
    a shorter tail is dropped, so that mostly-silent padding does not count as much as real audio."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("window size must be positive")
        self.size = size
        self._parts: list[np.ndarray] = []
        self._held = 0
        self._emitted = False

    def feed(self, chunk: np.ndarray) -> list[np.ndarray]:
        self._parts.append(chunk)
        self._held += len(chunk)
        out = []
        if self._held >= self.size:
            buffer = np.concatenate(self._parts)
            whole = len(buffer) // self.size
            out = [buffer[i * self.size:(i + 1) * self.size].copy() for i in range(whole)]
            rest = buffer[whole * self.size:]
            self._parts, self._held = ([rest] if len(rest) else []), len(rest)
            self._emitted = True
        return out

    def finish(self) -> list[np.ndarray]:
        """The zero-padded tail, when it holds at least half a window or is all there was."""
        held, parts = self._held, self._parts
        self._parts, self._held = [], 0
        if not held or (self._emitted and held < self.size // 2):
            return []
        window = np.zeros(self.size, dtype=np.float32)
        window[:held] = np.concatenate(parts)
        return [window]


def cut_windows(signal: np.ndarray, size: int) -> np.ndarray:
    """[windows, size]: a whole signal in memory cut as ``Windower`` cuts a stream (the whole windows are a
    view of ``signal``; a tail of at least half a window, or a signal shorter than one, is zero-padded)."""
    if size <= 0:
        raise ValueError("window size must be positive")
    whole = len(signal) // size
    windows = signal[: whole * size].reshape(whole, size)
    tail = len(signal) - whole * size
    if not tail or (whole and tail < size // 2):
        return windows
    padded = np.zeros((whole + 1, size), dtype=np.float32)
    padded[:whole] = windows
    padded[whole, :tail] = signal[whole * size:]
    return padded
