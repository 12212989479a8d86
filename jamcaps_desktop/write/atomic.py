"""Replace a file's contents atomically, never leaving it half-written.

The edit happens on a temporary copy in the same folder (so the final rename stays on one file
system): copy, edit, flush and fsync, verify, carry over permissions (and the modification time
when asked), check that the original did not change meanwhile, rename over it, fsync the folder.
A failure at any step removes the copy and leaves the original exactly as it was.

Each step goes through a module-level function so that tests can inject a failure into any of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import logging
import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
TEMP_PREFIX = ".jamcaps-"
TEMP_SUFFIX = ".tmp"
# Files up to this size are edited in memory and written once; larger ones are copied and edited on disk.
IN_MEMORY_LIMIT = 64 << 20


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
    """Copy a file's bytes into a new file (never over an existing one); file systems that can share
    blocks (XFS, Btrfs) do it without copying."""
    copy_range = getattr(os, "copy_file_range", None)
    with open(source, "rb") as src, open(target, "xb") as dst:
        size = os.fstat(src.fileno()).st_size
        copied = 0
        try:
            while copy_range is not None and copied < size:
                done = copy_range(src.fileno(), dst.fileno(), size - copied)
                if done == 0:
                    break
                copied += done
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                raise
        if copied < size:  # not supported here, or the file grew: copy the rest the ordinary way
            src.seek(copied)
            dst.seek(copied)
            shutil.copyfileobj(src, dst, 1 << 20)


def read_original(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def edit_buffer(data: bytes) -> io.BytesIO:
    """The in-memory file that the tags are edited in."""
    return io.BytesIO(data)


def write_copy(temp: str, data: memoryview, flush: bool) -> None:
    """Create the temporary copy (never over an existing file) holding ``data``."""
    with open(temp, "xb") as handle:
        handle.write(data)
        if flush:
            fsync_file(handle)


def fsync_file(handle: BinaryIO) -> None:
    """Flush a file's data to the disk (fdatasync: its data and size, not its access times)."""
    handle.flush()
    getattr(os, "fdatasync", os.fsync)(handle.fileno())


def flush_path(path: str) -> None:
    """Flush a finished copy to the disk, by path (the batch writer flushes many at once, in threads)."""
    try:
        with open(path, "rb") as handle:
            fsync_file(handle)
    except OSError as exc:
        raise os_error(exc, "flushing the copy to disk") from exc


# File systems whose syncfs() makes every file written to them durable, data and metadata, with one
# journal commit and one flush of the drive's cache. Elsewhere (network and FUSE file systems, where a
# file-system sync may not reach the storage; ext2, whose sync leaves the drive's cache alone; and any
# other) each copy is flushed on its own.
SYNCFS_FILE_SYSTEMS = frozenset({"ext3", "ext4", "xfs", "btrfs", "f2fs"})
# syncfs() reports write errors only from Linux 5.8 on
SYNCFS_KERNEL = (5, 8)


def file_system_type(st_dev: int) -> str | None:
    """The type of the mounted file system a device number belongs to now (Linux), or None if unknown.

    Not cached: device numbers are reused once a file system is unmounted.
    """
    wanted = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 3 and fields[2] == wanted and "-" in fields:
                    return fields[fields.index("-") + 1]
    except OSError:
        pass
    return None


def _kernel_version() -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    except (AttributeError, ValueError):
        return (0,)


def can_sync_file_system(st_dev: int) -> bool:
    """Whether ``sync_file_system`` (followed by ``check_flushed`` for each copy) may stand for flushing
    each file written on this device."""
    return (_syncfs is not None and _sync_file_range is not None and _kernel_version() >= SYNCFS_KERNEL
            and file_system_type(st_dev) in SYNCFS_FILE_SYSTEMS)


def _libc_function(name: str, argtypes: list[Any]) -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_syncfs = _libc_function("syncfs", [ctypes.c_int])
_sync_file_range = _libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_WAIT_WRITE_WAIT = 1 | 2 | 4  # SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER


def _last_error(action: str) -> WriteError:
    code = ctypes.get_errno()
    return os_error(OSError(code, os.strerror(code)), action)


def sync_file_system(folder: str) -> None:
    """Flush everything written to the folder's file system so far (Linux syncfs: one journal commit)."""
    assert _syncfs is not None
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise os_error(exc, "flushing the copies to disk") from exc
    try:
        if _syncfs(fd) != 0:
            raise _last_error("flushing the copies to disk")
    finally:
        os.close(fd)


def check_flushed(path: str) -> None:
    """After a file-system sync: raise WriteError if writing this file's data to the disk failed.

    The kernel reports a sync's write error once per file system, possibly to another caller; each file
    keeps its own error for whoever next waits on it, which this does (without another journal commit).
    """
    assert _sync_file_range is not None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise os_error(exc, "flushing the copy to disk") from exc
    try:
        if _sync_file_range(fd, 0, 0, _WAIT_WRITE_WAIT) != 0:
            raise _last_error("flushing the copy to disk")
    finally:
        os.close(fd)


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


def temp_tag(name: str) -> str:
    """A short, fixed-length stand-in for a file name inside temporary names (long names still fit)."""
    return hashlib.blake2b(os.fsencode(name), digest_size=8).hexdigest()


def temp_path_for(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TEMP_PREFIX}{secrets.token_hex(4)}-{temp_tag(name)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def discard_copies_of(path: str) -> None:
    """Remove any temporary copy of this file (beside it, or beside the file a link points to)."""
    for target in {path, os.path.realpath(path)}:
        folder, name = os.path.split(target)
        ending = f"-{temp_tag(name)}{TEMP_SUFFIX}"
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.startswith(TEMP_PREFIX) and entry.endswith(ending):
                discard(os.path.join(folder, entry))


def _copy_xattrs(source: str, target: str) -> None:
    """Extended attributes (Finder tags, SELinux labels…) travel with the new copy, where allowed."""
    if not hasattr(os, "listxattr"):
        return
    try:
        names = os.listxattr(source)
    except OSError:
        return
    for name in names:
        with contextlib.suppress(OSError):
            os.setxattr(target, name, os.getxattr(source, name))


def os_error(exc: OSError, action: str) -> WriteError:
    """The plain message for an OS error met while doing ``action``."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return DiskFullError(f"the disk is full ({action})")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ReadOnlyError(f"no permission to write ({action}): {exc.strerror}")
    return WriteError(f"{action} failed: {exc.strerror or exc}")


def _edit_in_memory(path: str, temp: str, st: os.stat_result, edit: Callable[[BinaryIO], T], flush: bool) -> T:
    """Edit the file's bytes in memory, then write the copy once: one read, one write, no copying."""
    try:
        data = read_original(path)
    except OSError as exc:
        raise os_error(exc, "reading the file") from exc
    if len(data) != st.st_size:
        raise FileChangedError("another program changed the file while it was being read")
    try:
        buffer = edit_buffer(data)
        del data
        result = edit(buffer)
    except OSError as exc:
        raise os_error(exc, "writing the tags") from exc
    try:
        write_copy(temp, buffer.getbuffer(), flush)
    except OSError as exc:
        raise os_error(exc, "writing the copy") from exc
    return result


def _edit_on_disk(path: str, temp: str, edit: Callable[[BinaryIO], T], flush: bool) -> T:
    """Copy a large file beside itself and edit the copy in place (mutagen moves only what it must)."""
    try:
        copy_file(path, temp)
    except OSError as exc:
        raise os_error(exc, "copying the file") from exc
    try:
        with open(temp, "r+b") as handle:
            result = edit(handle)
            if flush:
                fsync_file(handle)
            else:
                handle.flush()
    except OSError as exc:
        raise os_error(exc, "writing the tags") from exc
    return result


def _carry_over(path: str, temp: str, st: os.stat_result, keep_mtime: bool) -> None:
    """The original's permissions, owner (where allowed), extended attributes and, if asked, mtime."""
    os.chmod(temp, stat.S_IMODE(st.st_mode))
    if hasattr(os, "chown"):
        # only the owner or root can keep the owner; the mode is kept regardless
        with contextlib.suppress(PermissionError):
            os.chown(temp, st.st_uid, st.st_gid)
    _copy_xattrs(path, temp)
    if keep_mtime:
        os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns))


@dataclass
class PreparedCopy:
    """A verified, flushed copy of a file, waiting to replace it."""

    path: str
    temp: str
    original: FileState      # the file as it was when the copy was made
    made: FileState          # the copy as it was made (its size and modification time)


def discard(temp: str) -> None:
    if os.path.lexists(temp):
        try:
            os.unlink(temp)
        except OSError:
            log.warning("could not remove the temporary file %s", temp)


def prepare_copy(path: str, edit: Callable[[BinaryIO], T], *, expected: FileState | None = None,
                 keep_mtime: bool = False, flush: bool = True) -> tuple[T, PreparedCopy]:
    """Copy ``path`` beside itself, let ``edit`` change the copy, flush it, carry over permissions.

    ``flush=False`` leaves flushing the copy to the disk to the caller (``flush_path``), who must do it
    before ``commit_copy``; a batch flushes many copies at once, which costs far less than one by one.

    ``edit`` gets the copy opened read-write and returns whatever the caller wants back (it raises to
    abort). ``expected`` is the size and mtime the caller believes the file has: if the file differs,
    nothing is done. On any failure the copy is removed and the original was never touched.

    A symbolic link is written through: the copy goes beside the file it points to, and replaces that.
    """
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):  # only a link itself needs resolving: the copy goes beside its target
            path = os.path.realpath(path)
            st = os.stat(path)
    except FileNotFoundError:
        raise WriteError("the file is not there any more") from None
    except OSError as exc:
        raise os_error(exc, "reading the file's status") from exc
    if not stat.S_ISREG(st.st_mode):
        raise WriteError("not a regular file")
    if expected is not None and (st.st_size, st.st_mtime_ns) != (expected.size, expected.mtime_ns):
        raise FileChangedError("the file changed on disk since it was scanned; scan it again first")
    if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise ReadOnlyError("the file is read-only")
    if st.st_nlink > 1:
        raise WriteError(f"the file has {st.st_nlink} hard links; replacing it would leave the others "
                         "with the old tags")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK):
        raise ReadOnlyError("no permission to create files in its folder")

    temp = temp_path_for(path)
    try:
        if st.st_size <= IN_MEMORY_LIMIT:
            result = _edit_in_memory(path, temp, st, edit, flush)
        else:
            result = _edit_on_disk(path, temp, edit, flush)
        try:
            _carry_over(path, temp, st, keep_mtime)
            made = os.stat(temp)
        except OSError as exc:
            raise os_error(exc, "copying the file's permissions") from exc
    except BaseException:
        discard(temp)
        raise
    return result, PreparedCopy(path, temp, FileState(st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                                FileState(made.st_size, made.st_mtime_ns))


def commit_copy(prepared: PreparedCopy, *, dir_fsync: bool = True,
                release: Callable[[int], None] = os.close) -> FileState:
    """Put a prepared copy in place of its original, unless the original changed meanwhile.

    ``dir_fsync=False`` leaves flushing the folder (which makes the rename itself durable) to the
    caller, who may do it once for many files of one folder; the file's data was flushed before, so
    the file is never seen empty or half-written.

    The replaced file is held open across the rename and handed to ``release`` (which closes it):
    freeing a file's blocks waits on the file system's journal, and a batch does that in the background
    instead of inside each rename.
    """
    held = _hold(prepared.path)
    try:
        try:
            now = os.fstat(held) if held is not None else os.stat(prepared.path)
        except OSError:
            raise WriteError("the file disappeared while it was being tagged") from None
        if (now.st_size, now.st_mtime_ns) != (prepared.original.size, prepared.original.mtime_ns):
            raise FileChangedError("another program changed the file while it was being tagged")
        try:
            replace_file(prepared.temp, prepared.path)
        except OSError as exc:
            raise os_error(exc, "replacing the file") from exc
    except BaseException:
        discard(prepared.temp)
        if held is not None:
            os.close(held)
        raise
    if held is not None:
        release(held)
    if dir_fsync:
        fsync_dir(os.path.dirname(os.path.abspath(prepared.path)))
    try:
        return FileState.of(prepared.path)
    except OSError:  # moved or removed by another program just now: the file written is the copy
        return prepared.made


_HOLD_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0)


def _hold(path: str) -> int | None:
    """A descriptor on the file (None where it cannot be opened: the rename goes ahead regardless)."""
    try:
        return os.open(path, _HOLD_FLAGS)
    except OSError:
        return None
