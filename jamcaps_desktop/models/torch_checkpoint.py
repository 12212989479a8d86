"""Reading a PyTorch checkpoint (``torch.save``'s zip format) into numpy arrays, without torch.

A ``.pt`` file is a zip archive: ``<name>/data.pkl`` pickles the saved object, with every tensor
replaced by a reference to a raw storage file ``<name>/data/<key>``. This reader unpickles that object
with a restricted unpickler that knows only plain containers and tensors (anything else in the pickle
is refused rather than run, so a checkpoint cannot execute code), and rebuilds each tensor as a numpy
array from its storage, offset, size and stride.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands; the message says why."""


class _StorageType:
    def __init__(self, name: str) -> None:
        if name not in _STORAGE_DTYPES:
            raise CheckpointError(f"tensors of type {name} are not supported")
        self.dtype = _STORAGE_DTYPES[name]


def _bfloat16_to_float32(raw: bytes) -> np.ndarray:
    halves = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
    return halves.view(np.float32)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
                    ) -> np.ndarray:
    if not size:
        return storage[offset].copy()
    item = storage.itemsize
    span = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else offset
    if span > storage.size:
        raise CheckpointError("a tensor reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * item for s in stride])
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, handle: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(handle)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "builtins" and name in ("set", "frozenset", "dict", "list", "tuple"):
            return getattr(__builtins__, name) if not isinstance(__builtins__, dict) else __builtins__[name]
        raise CheckpointError(f"the checkpoint holds an object this reader does not load ({module}.{name})")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"unknown reference in the checkpoint: {pid!r}")
        _kind, storage_type, key, _location, _numel = pid[:5]
        if key not in self._storages:
            try:
                raw = self._archive.read(f"{self._prefix}data/{key}")
            except KeyError:
                raise CheckpointError(f"the storage {key} is missing from the checkpoint") from None
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.float32
            self._storages[key] = _bfloat16_to_float32(raw) if dtype == "bfloat16" else np.frombuffer(raw, dtype)
        return self._storages[key]


def read_checkpoint(path: str | Path) -> Any:
    """The object saved in a ``torch.save`` zip file, with tensors as numpy arrays."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{Path(path).name} is not a PyTorch checkpoint in the zip format (torch 1.6 and "
                              "newer write it)") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{Path(path).name} does not hold exactly one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in archive.namelist() \
            else "little"
        if byteorder != "little":
            raise CheckpointError("big-endian checkpoints are not supported")
        with archive.open(pickles[0]) as handle:
            try:
                return _Unpickler(handle, archive, prefix).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as exc:
                raise CheckpointError(f"{Path(path).name} cannot be read: {exc}") from exc
