"""Cutting a stream of audio chunks into overlapping analysis frames, a block at a time."""

from __future__ import annotations

import numpy as np

BLOCK = 32768  # samples gathered before frames are cut: decoders hand out small chunks


class FrameStream:
    """Feed chunks in order; get back [frames, size] arrays of frames every ``hop`` samples.

    Frames are handed out once about ``block`` samples have gathered (vectorised work on a second or
    two at a time costs far less than on each small decoded chunk), and by ``flush`` at the end. With
    ``lead`` zeros before the first sample, frame i is centred on sample i·hop when lead = size / 2.
    """

    def __init__(self, size: int, hop: int, *, lead: int = 0, block: int = BLOCK) -> None:
        self.size, self.hop, self.block = size, hop, block
        self._pending = np.zeros(lead, dtype=np.float32)
        self._queued: list[np.ndarray] = []
        self._queued_samples = 0

    def feed(self, chunk: np.ndarray) -> np.ndarray | None:
        self._queued.append(np.asarray(chunk, dtype=np.float32))
        self._queued_samples += len(chunk)
        return self.flush() if self._queued_samples >= self.block else None

    def flush(self) -> np.ndarray | None:
        """The whole frames the gathered samples make (None when there are none yet)."""
        if not self._queued:
            return None
        signal = np.concatenate([self._pending, *self._queued])
        self._queued, self._queued_samples = [], 0
        frames = 0 if len(signal) < self.size else 1 + (len(signal) - self.size) // self.hop
        self._pending = signal[frames * self.hop:].copy()
        if not frames:
            return None
        strides = (signal.strides[0] * self.hop, signal.strides[0])
        return np.lib.stride_tricks.as_strided(signal, shape=(frames, self.size), strides=strides)
