"""A reader for ``.safetensors`` files (Hugging Face's tensor format) with numpy only.

The format: an unsigned 64-bit little-endian header length N, then N bytes of UTF-8 JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an optional ``__metadata__``
of strings), then the tensors' raw little-endian bytes, row-major, at those offsets counted from the end
of the header. The safetensors package is not needed for this, and leaving it out keeps torch-adjacent
wheels out of the install. Every size and offset is checked before any data is read, so a truncated or
damaged file raises :class:`SafetensorsError` with what is wrong rather than giving garbage weights.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

# The dtype names of the format and the numpy types of their stored bytes; BF16 is stored as the top
# half of a float32 and is widened on reading (numpy has no bfloat16).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# Real headers are tens of kilobytes; the format's own reference implementation refuses more than 100 MB,
# and so does this reader (a damaged length field would otherwise ask for gigabytes).
MAX_HEADER_BYTES = 100_000_000


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file; the message says what is wrong with it."""


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """The tensor entries (name → dtype, shape, data_offsets), the ``__metadata__`` and the byte offset
    where the data begins, after checking that every entry is well formed and lies inside the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{path.name}: too short to be a safetensors file ({size} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise SafetensorsError(f"{path.name}: header length {length} does not fit in a file of {size} bytes "
                                   "(truncated or not a safetensors file)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"{path.name}: the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path.name}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"{path.name}: __metadata__ is not a JSON object")
    data_start = 8 + length
    data_size = size - data_start
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        _check_entry(path.name, name, entry, data_size)
        begin, end = entry["data_offsets"]
        if end > begin:
            spans.append((begin, end, name))
    spans.sort()
    for (_, first_end, first), (second_begin, _, second) in itertools.pairwise(spans):
        if second_begin < first_end:
            raise SafetensorsError(f"{path.name}: the data of {first!r} and {second!r} overlap")
    return header, metadata, data_start


def _check_entry(file_name: str, name: str, entry: Any, data_size: int) -> None:
    where = f"{file_name}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
        raise SafetensorsError(f"{where} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise SafetensorsError(f"{where} has the unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in shape):
        raise SafetensorsError(f"{where} has a malformed shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise SafetensorsError(f"{where} has malformed data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise SafetensorsError(f"{where} lies outside the file's {data_size} data bytes "
                               f"(offsets {begin}..{end}; the file may be truncated)")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if end - begin != expected:
        raise SafetensorsError(f"{where}: {end - begin} bytes stored for a {dtype} tensor of shape {shape} "
                               f"({expected} bytes)")


def read_safetensors(path: str | os.PathLike[str], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of ``path`` (or only ``names`` of them) as native-endian numpy arrays of their own
    memory. BF16 tensors come back as float32 (exactly: bfloat16 is a truncated float32)."""
    header, _, data_start = read_header(path)
    if names is not None:
        missing = [n for n in names if n not in header]
        if missing:
            raise SafetensorsError(f"{Path(path).name} holds no tensor {missing[0]!r}")
        header = {n: header[n] for n in names}
    tensors: dict[str, np.ndarray] = {}
    with open(path, "rb") as handle:
        # in file order, so the reads go forward through the file
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            begin, end = entry["data_offsets"]
            buffer = bytearray(end - begin)
            handle.seek(data_start + begin)
            if handle.readinto(buffer) != len(buffer):
                raise SafetensorsError(f"{Path(path).name}: the data of {name!r} is cut short")
            stored = DTYPES[entry["dtype"]]
            array = np.frombuffer(buffer, dtype=stored).reshape(entry["shape"])
            if entry["dtype"] == "BF16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            elif not stored.isnative:  # only on a big-endian machine
                array = array.astype(stored.newbyteorder("="))
            tensors[name] = array
    return tensors
