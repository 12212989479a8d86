"""A content fingerprint cheap enough for every file of a large collection.

It hashes the size and three 64 KiB samples (start, middle, end) instead of the whole file, so a
first scan of a 50 GB collection reads ~200 KB per file, not 50 GB. Two different tracks of the
same size agreeing on all three samples is not a realistic event; a file whose tags another
program rewrote gets a new fingerprint, and is then found again by path rather than by content.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

SAMPLE = 64 * 1024


def fingerprint_fileobj(handle: BinaryIO, size: int) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(size.to_bytes(8, "little"))
    if size <= 3 * SAMPLE:
        handle.seek(0)
        digest.update(handle.read())
    else:
        for offset in (0, size // 2 - SAMPLE // 2, size - SAMPLE):
            handle.seek(offset)
            digest.update(handle.read(SAMPLE))
    return digest.hexdigest()


def fingerprint_file(path: str) -> str:
    with open(path, "rb") as handle:
        import os

        size = os.fstat(handle.fileno()).st_size
        return fingerprint_fileobj(handle, size)
