"""Everything the library records about one file, read in one go.

``read_file`` never raises for a problem with the file itself: it returns an error record with a
plain reason. It touches no database, so it can run in worker processes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from jamcaps_desktop.scan.fingerprint import fingerprint_fileobj
from jamcaps_desktop.scan.probe import (
    ProbeError,
    StreamInfo,
    check_complete,
    checked_stream_info,
    open_mutagen,
)
from jamcaps_desktop.scan.sniff import sniff_file
from jamcaps_desktop.tags.read import TagValue, read_tags

log = logging.getLogger(__name__)


@dataclass
class FileRecord:
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int | None
    status: str                      # "ok", "error" or "ignored" (not audio, not expected to be)
    error: str | None = None
    fingerprint: str | None = None
    container: str | None = None
    stream: StreamInfo | None = None
    tags: list[TagValue] = field(default_factory=list)
    tag_formats: list[str] = field(default_factory=list)


def read_file(path: str, size: int, mtime_ns: int, ctime_ns: int | None = None, *, expect_audio: bool
              ) -> FileRecord:
    """Read one file whose stat gave ``size``, ``mtime_ns`` and ``ctime_ns``.

    ``expect_audio``: its name says audio, so content that is not audio is an error.
    """
    record = FileRecord(path, size, mtime_ns, ctime_ns, status="error")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; several steps share it
    except PermissionError:
        record.error = "permission denied"
        return record
    except FileNotFoundError:
        record.error = "the file disappeared during the scan"
        return record
    except OSError as exc:
        record.error = f"cannot open the file: {exc.strerror or exc}"
        return record
    try:
        if size == 0:
            if expect_audio:
                record.error = "empty file (0 bytes)"
            else:
                record.status, record.error = "ignored", "not audio: an empty file"
            return record
        try:
            sniffed = sniff_file(handle)
            record.fingerprint = fingerprint_fileobj(handle, size)
        except OSError as exc:
            record.error = f"read error: {exc.strerror or exc}"
            return record
        if sniffed.container is None:
            reason = f"not audio: the content is {sniffed.what or 'not a known audio format'}"
            if expect_audio:
                record.error = reason
            else:
                record.status, record.error = "ignored", reason
            return record
        record.container = sniffed.container
    finally:
        handle.close()

    try:
        opened = open_mutagen(path, sniffed.container, sniffed.codec)
        stream = checked_stream_info(path, opened, sniffed.container, sniffed.codec, size)
        check_complete(path, stream)
        tags = read_tags(opened, path)
    except ProbeError as exc:
        if not expect_audio:
            # a file whose name does not say audio and whose content only looked like it
            record.status, record.error = "ignored", f"not audio: looks like {sniffed.container} but {exc}"
            return record
        record.error = str(exc)
        return record
    except Exception as exc:  # a mutagen bug on a strange file must not stop a batch
        log.warning("unexpected error reading %s", path, exc_info=True)
        record.error = f"unexpected error while reading: {type(exc).__name__}: {exc}"[:300]
        return record
    record.status = "ok"
    record.stream = stream
    record.tags = tags.values
    record.tag_formats = tags.formats
    return record
