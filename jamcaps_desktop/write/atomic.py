"""Replace a file's contents atomically, never leaving it half-written.

The edit happens on a temporary copy in the same folder (so the final rename stays on one file
system): copy, edit, flush and fsync, verify, carry over permissions (and the modification time
when asked), check that the original did not change meanwhile, rename over it, fsync the folder.
A failure at any step removes the copy and leaves the original exactly as it was.

Each step goes through a module-level function so that tests can inject a failure into any of them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
TEMP_PREFIX = ".jamcaps-"
TEMP_SUFFIX = ".tmp"


class WriteError(Exception):
    """The file was not changed; the message says why in plain words."""


class FileChangedError(WriteError):
    pass


class ReadOnlyError(WriteError):
    pass


class DiskFullError(WriteError):
    pass


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    ctime_ns: int | None = None  # informational: compared only where both sides know it

    @classmethod
    def of(cls, path: str) -> FileState:
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- the steps (patched by fault-injection tests) -------------------------------------------------
def copy_file(source: str, target: str) -> None:
    shutil.copyfile(source, target)


def fsync_file(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def replace_file(source: str, target: str) -> None:
    os.replace(source, target)


def fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some file systems do not allow opening a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_for(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TEMP_PREFIX}{secrets.token_hex(4)}-{name}{TEMP_SUFFIX}")


def _os_error_message(exc: OSError, action: str) -> WriteError:
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return DiskFullError(f"the disk is full ({action})")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ReadOnlyError(f"no permission to write ({action}): {exc.strerror}")
    return WriteError(f"{action} failed: {exc.strerror or exc}")


def rewrite_file(path: str, edit: Callable[[BinaryIO], T], *, expected: FileState | None = None,
                 keep_mtime: bool = False, dir_fsync: bool = True,
                 before_replace: Callable[[T], None] | None = None) -> tuple[T, FileState]:
    """Apply ``edit`` to a copy of ``path`` and put the copy in its place.

    ``edit`` gets the copy opened read-write and returns whatever the caller wants back (it raises to
    abort; the original is then untouched). ``expected`` is the size and mtime the caller believes
    the file has: if the file differs, nothing is written. ``before_replace`` runs once the verified
    copy is safely on disk, just before it replaces the original (the journal records the change
    there, so a crash at any point leaves a journal that says what the file may hold).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise WriteError("the file is not there any more") from None
    except OSError as exc:
        raise _os_error_message(exc, "reading the file's status") from exc
    if not stat.S_ISREG(st.st_mode):
        raise WriteError("not a regular file")
    if expected is not None and (st.st_size, st.st_mtime_ns) != (expected.size, expected.mtime_ns):
        raise FileChangedError("the file changed on disk since it was scanned; scan it again first")
    if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise ReadOnlyError("the file is read-only")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK):
        raise ReadOnlyError("no permission to create files in its folder")

    temp = temp_path_for(path)
    try:
        try:
            copy_file(path, temp)
        except OSError as exc:
            raise _os_error_message(exc, "copying the file") from exc
        try:
            with open(temp, "r+b") as handle:
                result = edit(handle)
                fsync_file(handle)
        except OSError as exc:
            raise _os_error_message(exc, "writing the tags") from exc
        try:
            os.chmod(temp, stat.S_IMODE(st.st_mode))
            if hasattr(os, "chown"):
                # only the owner or root can keep the owner; the mode is kept regardless
                with contextlib.suppress(PermissionError):
                    os.chown(temp, st.st_uid, st.st_gid)
            if keep_mtime:
                os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as exc:
            raise _os_error_message(exc, "copying the file's permissions") from exc
        if before_replace is not None:
            before_replace(result)
        now = os.stat(path)
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise FileChangedError("another program changed the file while it was being tagged")
        try:
            replace_file(temp, path)
        except OSError as exc:
            raise _os_error_message(exc, "replacing the file") from exc
        if dir_fsync:
            fsync_dir(folder)
    finally:
        if os.path.lexists(temp):
            try:
                os.unlink(temp)
            except OSError:
                log.warning("could not remove the temporary file %s", temp)
    return result, FileState.of(path)
