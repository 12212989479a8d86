"""File paths as the library stores them.

Linux file names are bytes, and nearly all of them are valid UTF-8. Every track row keeps its path
twice: ``path_key``, the exact bytes (unique, used for every lookup), and ``path``, readable text
(the same string for UTF-8 names; invalid bytes shown as ``\\xNN`` otherwise). Two different names
can never collide, whatever they contain.
"""

from __future__ import annotations

import os


def path_key(path: str) -> bytes:
    """The exact bytes of ``path`` (as found on disk)."""
    return os.fsencode(path)


def display_path(path: str | bytes) -> str:
    """Readable text for a path: exact for UTF-8 names, ``\\xNN`` for other bytes."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def fs_path(key: bytes) -> str:
    """The path to hand to the operating system for a stored key."""
    return os.fsdecode(key)


def key_range(folder_key: bytes) -> tuple[bytes, bytes]:
    """Keys strictly inside a folder: ``folder/`` <= key < ``folder0`` ('0' sorts right after '/')."""
    base = folder_key.rstrip(b"/")
    return base + b"/", base + b"0"


def real_path(path: str) -> str:
    """An absolute path with symbolic links resolved, so one file has one path in the library."""
    return os.path.realpath(os.path.abspath(path))
