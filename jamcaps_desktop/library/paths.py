"""File paths as stored in the library.

Linux file names are bytes. Nearly all are valid UTF-8 and are stored as they are. A name that is
not valid UTF-8 cannot be stored as SQLite TEXT exactly, so the row keeps its exact bytes in
``path_bytes`` and a readable form (invalid bytes shown as ``\\xNN``) in ``path``.
"""

from __future__ import annotations

import os


def fs_path_to_db(path: str) -> tuple[str, bytes | None]:
    """Return (display text, exact bytes or None when the text is exact)."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def db_path_to_fs(path: str, path_bytes: bytes | None) -> str:
    """The path to hand to the operating system for a stored track."""
    if path_bytes is not None:
        return os.fsdecode(path_bytes)
    return path


def display_path(path: str) -> str:
    """The path as the library shows it (exact for UTF-8 names, ``\\xNN`` for other bytes)."""
    return fs_path_to_db(path)[0]
