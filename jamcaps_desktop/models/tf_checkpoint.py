"""Read TensorFlow 1 checkpoints (tensor-bundle V2) without TensorFlow.

A checkpoint is a ``.index`` file, a LevelDB-style sorted table mapping variable names to
``BundleEntryProto`` records (dtype, shape, shard, offset, size, crc32c), and ``.data-NNNNN-of-NNNNN``
shards holding the raw little-endian tensor bytes. This reader handles uncompressed tables and float,
double and integer tensors, which is what the published checkpoints the app converts contain.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER = 5
# TensorFlow DataType enum values → numpy
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 19: np.float16}


class CheckpointError(Exception):
    """The checkpoint files are missing, damaged or of a kind this reader does not handle."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise CheckpointError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint too long")


def _fields(message: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a serialized protobuf message."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(message, pos)
            out.append((number, wire, value))
        elif wire == 1:
            out.append((number, wire, struct.unpack_from("<Q", message, pos)[0]))
            pos += 8
        elif wire == 2:
            length, pos = _varint(message, pos)
            out.append((number, wire, message[pos:pos + length]))
            pos += length
        elif wire == 5:
            out.append((number, wire, struct.unpack_from("<I", message, pos)[0]))
            pos += 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
    return out


@dataclass(frozen=True)
class BundleEntry:
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int | None


def _entry(value: bytes) -> BundleEntry:
    dtype = shard = offset = size = 0
    shape: list[int] = []
    crc = None
    for number, _wire, field in _fields(value):
        if number == 1:
            dtype = int(field)  # type: ignore[arg-type]
        elif number == 2:
            for dim_number, _w, dim in _fields(field):  # type: ignore[arg-type]
                if dim_number == 2:
                    size_value = next((v for n, _, v in _fields(dim) if n == 1), 0)  # type: ignore[arg-type]
                    shape.append(int(size_value))  # type: ignore[arg-type]
        elif number == 3:
            shard = int(field)  # type: ignore[arg-type]
        elif number == 4:
            offset = int(field)  # type: ignore[arg-type]
        elif number == 5:
            size = int(field)  # type: ignore[arg-type]
        elif number == 6:
            crc = int(field)  # type: ignore[arg-type]
        elif number == 7:
            raise CheckpointError("sliced tensors are not supported")
    return BundleEntry(dtype, tuple(shape), shard, offset, size, crc)


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one table block (keys are prefix-compressed against the previous one)."""
    if len(block) < 4:
        raise CheckpointError("table block too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * restarts
    entries: list[tuple[bytes, bytes]] = []
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + value_length]))
        pos += value_length
    return entries


def _read_block(data: bytes, handle: bytes) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + BLOCK_TRAILER > len(data):
        raise CheckpointError("table block outside the index file")
    if data[offset + size] != 0:
        raise CheckpointError("compressed checkpoint index blocks are not supported")
    return data[offset:offset + size]


def read_index(index_path: Path) -> dict[str, BundleEntry]:
    data = index_path.read_bytes()
    if len(data) < FOOTER_SIZE:
        raise CheckpointError(f"{index_path} is too short to be a checkpoint index")
    footer = data[-FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != TABLE_MAGIC:
        raise CheckpointError(f"{index_path} is not a TensorFlow checkpoint index")
    _meta_offset, pos = _varint(footer, 0)
    _meta_size, pos = _varint(footer, pos)
    index_handle = footer[pos:]
    entries: dict[str, BundleEntry] = {}
    for _last_key, handle in _block_entries(_read_block(data, index_handle)):
        for key, value in _block_entries(_read_block(data, handle)):
            if key:  # the empty key holds the bundle header
                entries[key.decode("utf-8")] = _entry(value)
    return entries


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _make_crc_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _make_crc_table()


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_checkpoint(prefix: str | Path, *, skip: tuple[str, ...] = ("/Adam", "/Adam_1"),
                    verify: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint at ``prefix`` (``prefix.index`` + data shards), by variable name.

    Variables whose name ends with one of ``skip`` (optimizer slots) are left out. With ``verify``
    each tensor's bytes are checked against the crc32c the index records.
    """
    prefix = Path(prefix)
    if prefix.is_dir():  # a checkpoint saved with an empty name: the folder holds ".index" and ".data-…"
        folder, stem = prefix, ""
    else:
        folder, stem = prefix.parent, prefix.name
    index_path = folder / (stem + ".index")
    if not index_path.is_file():
        raise CheckpointError(f"no checkpoint index at {index_path}")
    entries = read_index(index_path)
    shards: dict[int, bytes] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, entry in sorted(entries.items()):
        if name.endswith(skip):
            continue
        dtype = _DTYPES.get(entry.dtype)
        if dtype is None:
            continue  # strings and other kinds: not weights
        if entry.shard not in shards:
            shard_files = sorted(folder.glob(stem + ".data-*"))
            if not shard_files:
                raise CheckpointError(f"no data shard beside {index_path}")
            shards[entry.shard] = shard_files[entry.shard].read_bytes()
        blob = shards[entry.shard][entry.offset:entry.offset + entry.size]
        if len(blob) != entry.size:
            raise CheckpointError(f"{name}: the data shard is truncated")
        if verify and entry.crc32c is not None and _masked(_crc32c(blob)) != entry.crc32c:
            raise CheckpointError(f"{name}: checksum mismatch (damaged checkpoint)")
        tensors[name] = np.frombuffer(blob, dtype=np.dtype(dtype).newbyteorder("<")).reshape(entry.shape).copy()
    return tensors
