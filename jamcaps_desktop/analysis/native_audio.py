"""Handing a track's audio at its own rate from a decoding worker to the job, through shared memory.

With the front ends on a GPU, the loudness (which needs every channel at the file's own rate: 60 MB for
three minutes of CD audio in float32) is measured there too. Sending that much through a pipe would cost
the job's process more than the measurement saves, so a worker writes it, in half precision, to a file in
shared memory (a RAM-backed folder, ``/dev/shm`` on Linux) and the job reads the file, measures, and
deletes it.

The files are named after the job's process, so that what a cancelled job leaves behind, and what a job
that crashed left behind, is removed by the next. Where there is no such folder, or no room in it, or
the file is long (``NATIVE_SECONDS``), the worker measures the loudness itself as before.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NATIVE_SECONDS = 30 * 60  # longer tracks are measured in the worker, as they stream
# half precision halves what is written, mapped and copied to the GPU; its rounding (about -66 dB below
# each sample) moves a loudness by under 0.001 LU. The sample peak is taken from the float32 samples.
NATIVE_DTYPE = np.float16
SHARED_MEMORY = Path("/dev/shm")
_PREFIX = "jamcaps-audio-"


@dataclass(frozen=True)
class NativeAudio:
    """[channels, samples] of ``NATIVE_DTYPE`` at ``rate`` in the file ``path``, and the sample peak (linear)."""

    path: str
    channels: int
    samples: int
    rate: int
    names: list[str]
    peak: float

    def load(self) -> np.ndarray:
        return np.fromfile(self.path, dtype=NATIVE_DTYPE).reshape(self.channels, self.samples)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def native_audio_folder() -> str | None:
    """Where this job's workers put audio (a folder and a name prefix), or None without shared memory."""
    if not SHARED_MEMORY.is_dir() or not os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return None
    _remove_stale()
    return str(SHARED_MEMORY / f"{_PREFIX}{os.getpid()}-")


def save_native(planes: np.ndarray, rate: int, names: list[str], target: str) -> NativeAudio | None:
    """Write [channels, samples] to a new file under ``target``; None where it does not fit."""
    folder, prefix = os.path.split(target)
    peak = float(max(planes.max(initial=0.0), -planes.min(initial=0.0)))
    try:
        handle, path = tempfile.mkstemp(prefix=prefix, suffix=".f32", dir=folder)
    except OSError:
        return None
    try:
        with os.fdopen(handle, "wb") as out:
            planes.astype(NATIVE_DTYPE).tofile(out)
    except OSError:  # shared memory full
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return NativeAudio(path, planes.shape[0], planes.shape[1], rate, list(names), peak)


def remove_native_files(target: str) -> None:
    """Remove every file a job's workers wrote under ``target`` that was not measured and removed."""
    folder, prefix = os.path.split(target)
    for path in Path(folder).glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_stale() -> None:
    """Files of jobs whose process is gone (a crash, a kill)."""
    with contextlib.suppress(OSError):
        for path in SHARED_MEMORY.glob(f"{_PREFIX}*"):
            pid = path.name[len(_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True
