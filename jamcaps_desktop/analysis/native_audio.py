"""Handing a track's audio from a decoding worker to the job through shared memory.

With the front ends on a GPU, a worker hands over each track's 16 kHz audio (11.5 MB for three
minutes) and, for the loudness, every channel at the file's own rate (30 MB in half precision for three
minutes of CD audio). Pickled through a pipe, that would cost the job's process (one process, whose
time limits the whole analysis) more than the measurements save, so a worker writes each to a file in
shared memory (a RAM-backed folder, ``/dev/shm`` on Linux); the job maps the file and deletes it at
once (the mapping stays readable until it is dropped).

The loudness file is already laid out as the loudness graph takes it (``frontend_graphs.loudness_graph``):
the filter's history of silence, the first channel in whole 100 ms steps, silence long enough for the
filter to come to rest, the next channel, and so on; one graph run measures the whole track.

The files are named after the job's process, so that what a cancelled job leaves behind, and what a job
that crashed left behind, is removed by the next. Where there is no such folder, or no room in it, the
worker hands the audio over through the pipe, and a track over ``NATIVE_BYTES`` has its loudness
measured in the worker, as it streams.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jamcaps_desktop.audio.loudness_blocks import BlockPlan, block_plan, separation

# a worker holds a track's samples at the file's own rate until the end of the file: tracks with more
# than this many bytes of them (float32; about six minutes of CD audio) are measured in the worker, as
# they stream, so that a worker never needs more than a few hundred megabytes
NATIVE_BYTES = 128 * 1024 * 1024
STALE_SECONDS = 3600  # files of a vanished job older than this are removed (a live job's last seconds)
# half precision halves what is written, mapped and copied to the GPU; its rounding (about -66 dB below
# each sample) moves a loudness by under 0.001 LU. The sample peak is taken from the float32 samples.
NATIVE_DTYPE = np.float16
SHARED_MEMORY = Path("/dev/shm")
_PREFIX = "jamcaps-audio-"


@dataclass(frozen=True)
class SharedArray:
    """A float array in a file in shared memory."""

    path: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def take(self) -> np.ndarray:
        """The array, mapped; the file is removed (the mapping keeps the data while it is used).

        Where the system can, the mapping is filled at once (``MAP_POPULATE``): one call instead of a page
        fault for every 4 kB as the copy to the GPU reads it, in a process whose many threads make each
        fault dearer (BEATs on an H100: 0.64-0.74 of decode-alone against 0.63-0.65)."""
        try:
            dtype = np.dtype(self.dtype)
            populate = getattr(mmap, "MAP_POPULATE", 0)
            size = self.nbytes
            if not populate or size == 0:
                return np.memmap(self.path, dtype=dtype, mode="r", shape=self.shape)
            handle = os.open(self.path, os.O_RDONLY)
            try:
                mapped = mmap.mmap(handle, size, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)
            finally:
                os.close(handle)
            return np.frombuffer(mapped, dtype=dtype).reshape(self.shape)
        finally:
            self.remove()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@dataclass(frozen=True)
class NativeAudio:
    """A track's channels at ``rate`` laid out for the loudness graph, and the sample peak (linear)."""

    array: SharedArray
    channels: int
    steps: int  # whole 100 ms steps per channel
    rate: int
    names: list[str]
    peak: float

    @property
    def plan(self) -> BlockPlan:
        return block_plan(self.rate)

    def remove(self) -> None:
        self.array.remove()


def native_audio_folder() -> str | None:
    """Where this job's workers put audio (a folder and a name prefix), or None without shared memory."""
    if not SHARED_MEMORY.is_dir() or not os.access(SHARED_MEMORY, os.W_OK | os.X_OK):
        return None
    _remove_stale()
    # the process and a token of the job: two jobs in one process (two libraries) keep apart
    return str(SHARED_MEMORY / f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-")


def save_array(array: np.ndarray, target: str) -> SharedArray | None:
    """Write an array to a new file under ``target``; None where it does not fit."""
    folder, prefix = os.path.split(target)
    try:
        handle, path = tempfile.mkstemp(prefix=prefix, suffix=".raw", dir=folder)
    except OSError:
        return None
    try:
        with os.fdopen(handle, "wb") as out:
            np.ascontiguousarray(array).tofile(out)
    except OSError:  # shared memory full
        with contextlib.suppress(OSError):
            os.unlink(path)
        return None
    return SharedArray(path, array.dtype.str, tuple(array.shape))


@functools.lru_cache(maxsize=1)
def _half_cast() -> Any:
    """An ONNX Runtime session that casts float32 to float16 on one thread (None without ONNX Runtime)."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16)], "to_half",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def to_half(source: np.ndarray, target: np.ndarray) -> None:
    """``target[:] = source`` for a contiguous float32 ``source`` and float16 ``target`` (round to nearest
    even, as numpy does), by ONNX Runtime's vectorised cast: numpy converts to float16 without vector
    instructions on most processors, about ten times slower (0.05–0.1 s for three minutes of CD audio, in
    the decoding workers, which limit the analysis on a GPU)."""
    session = _half_cast()
    if session is not None and source.flags.c_contiguous and target.flags.c_contiguous and len(source):
        import onnxruntime as ort

        binding = session.io_binding()
        binding.bind_cpu_input("x", source)
        binding.bind_ortvalue_output("y", ort.OrtValue.ortvalue_from_numpy(target))  # written in place
        session.run_with_iobinding(binding)
        return
    target[...] = source


def save_native(chunks: list[np.ndarray] | np.ndarray, rate: int, names: list[str], target: str
                ) -> NativeAudio | None:
    """Lay [channels, samples] chunks (of one channel count) out for the loudness graph and write them under
    ``target``; None where they do not fit, or where the track is too short to have a loudness."""
    parts = [chunks] if isinstance(chunks, np.ndarray) else chunks
    plan = block_plan(rate)
    channels = parts[0].shape[0]
    steps = sum(part.shape[1] for part in parts) // plan.step
    if steps < 4:
        return None
    used = steps * plan.step
    gap = separation(plan) * plan.block
    layout = np.zeros(plan.context * plan.block + channels * used + (channels - 1) * gap, dtype=NATIVE_DTYPE)
    start = plan.context * plan.block
    for channel in range(channels):
        samples, filled = [], 0
        for part in parts:
            take = min(part.shape[1], used - filled)
            if take <= 0:
                break
            samples.append(part[channel, :take])
            filled += take
        to_half(np.concatenate(samples), layout[start:start + used])
        start += used + gap
    array = save_array(layout, target)
    if array is None:
        return None
    peak = max((float(max(part.max(initial=0.0), -part.min(initial=0.0))) for part in parts), default=0.0)
    return NativeAudio(array, channels, steps, rate, list(names), peak)


# how a decoder's sample formats are handed over as they are (other formats are converted in the worker)
RAW_FORMATS = {"s16": "int16", "s16p": "int16", "s32": "int32", "s32p": "int32", "flt": "float32", "fltp": "float32"}
# a worker holds a track's decoded samples until its end: longer tracks (about twelve minutes of
# float32 stereo at 44.1 kHz, twenty-five of 16-bit) are resampled and measured in the worker as they stream
RAW_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class RawAudio:
    """A track's ``length`` samples as its decoder made them, at ``rate``: [samples, channels] where
    ``interleaved``, else [channels, samples]; ``dtype`` one of ``RAW_FORMATS``' values."""

    array: SharedArray
    rate: int
    interleaved: bool
    names: list[str]

    @property
    def dtype(self) -> str:
        return np.dtype(self.array.dtype).name

    @property
    def length(self) -> int:
        """Samples per channel."""
        return self.array.shape[0 if self.interleaved else 1]

    def remove(self) -> None:
        self.array.remove()


class RawWriter:
    """Writes a track's decoded samples to a file in shared memory as they come, in blocks, without
    converting them. Planar channels each get a region of ``room`` samples while the track is written (the
    container's duration and a margin: unwritten room takes no memory, the file being sparse); ``finish``
    then moves them together, so that the file handed over is dense: reading a hole of a file in shared
    memory would take a page of it, and with the folder full, end the process."""

    def __init__(self, target: str, dtype: np.dtype, channels: int, interleaved: bool, room: int) -> None:
        folder, prefix = os.path.split(target)
        handle, self.path = tempfile.mkstemp(prefix=prefix, suffix=".raw", dir=folder)
        self._out = os.fdopen(handle, "r+b", buffering=0)
        self.dtype, self.channels, self.interleaved = dtype, channels, interleaved
        self.room = room
        self.length = 0
        self._width = channels if interleaved else 1  # values per sample in a plane
        self._planes = 1 if interleaved else channels  # PyAV may list more planes than there are

    def write(self, block: Any) -> bool:
        """Append an AudioFrame's samples; False where they do not fit (the room, or shared memory)."""
        count = block.samples
        if not self.interleaved and self.length + count > self.room:
            return False
        size = count * self._width * self.dtype.itemsize
        planes = block.planes
        try:
            for channel in range(self._planes):  # interleaved: one plane, at the start
                offset = (channel * self.room + self.length) * self._width * self.dtype.itemsize
                if os.pwrite(self._out.fileno(), memoryview(planes[channel])[:size], offset) != size:
                    return False  # a short write: shared memory is full
        except OSError:
            return False
        self.length += count
        return True

    def bytes(self) -> int:
        return self.length * self.channels * self.dtype.itemsize

    def finish(self, rate: int, names: list[str]) -> RawAudio:
        """The written samples, dense: [samples, channels] or [channels, samples]. OSError where shared
        memory is full."""
        handle = self._out.fileno()
        if not self.interleaved and self.channels > 1:  # channel c moves from c·room back to c·length
            item, chunk = self.dtype.itemsize, _MOVE_CHUNK
            for channel in range(1, self.channels):
                source, target, left = channel * self.room * item, channel * self.length * item, self.length * item
                while left > 0:  # forward, in chunks: the target never overtakes the source
                    data = os.pread(handle, min(chunk, left), source)
                    if not data or os.pwrite(handle, data, target) != len(data):
                        raise OSError("shared memory is full")
                    source, target, left = source + len(data), target + len(data), left - len(data)
        os.ftruncate(handle, self.bytes())
        self._out.close()
        shape = (self.length, self.channels) if self.interleaved else (self.channels, self.length)
        return RawAudio(SharedArray(self.path, self.dtype.str, shape), rate, self.interleaved, list(names))

    def discard(self) -> None:
        self._out.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


_MOVE_CHUNK = 4 * 1024 * 1024  # bytes moved at a time when a planar file is made dense


def remove_native_files(target: str) -> None:
    """Remove every file a job's workers wrote under ``target`` that was not taken."""
    folder, prefix = os.path.split(target)
    for path in Path(folder).glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            path.unlink()


def _remove_stale() -> None:
    """Files of jobs whose process is gone (a crash, a kill)."""
    with contextlib.suppress(OSError):
        for path in SHARED_MEMORY.glob(f"{_PREFIX}*"):
            pid = path.name[len(_PREFIX):].split("-", 1)[0]
            # by age too: a job in another container sharing this folder is invisible to ``_alive``
            if pid.isdigit() and not _alive(int(pid)) and time.time() - path.stat().st_mtime > STALE_SECONDS:
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
