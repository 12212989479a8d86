"""Walk folders for the scanner: recursive, symlinks followed without loops, hidden names skipped.

Nothing here opens a file. Each regular file is classified by its name: an audio extension (its
content is checked later), a known non-audio extension (cover art, playlists, logs: ignored with no
I/O at all), or anything else (its content decides).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

AUDIO_EXTENSIONS = frozenset({
    "mp3", "mp2", "mp1", "mpga", "flac", "fla", "ogg", "oga", "opus", "spx", "m4a", "m4b", "m4p", "m4r",
    "mp4", "aac", "adts", "alac", "wav", "wave", "bwf", "aif", "aiff", "aifc", "wma", "asf", "ape", "wv",
    "mpc", "mp+", "mpp", "dsf", "dff", "tta", "tak", "ofr", "ofs", "ac3", "eac3",
})

_NON_AUDIO = {
    "image": "jpg jpeg jpe png gif bmp tif tiff webp heic heif svg ico psd",
    "text": "txt log cue nfo md rst json xml ini cfg conf toc csv tsv yaml yml html htm rtf lrc srt",
    "playlist": "m3u m3u8 pls xspf wpl asx",
    "checksum": "sfv md5 sha1 sha256 ffp accurip crc",
    "document": "pdf doc docx odt epub",
    "archive": "zip rar 7z gz tgz tar bz2 xz zst",
    "video": "mkv webm avi mov m4v wmv ogv flv mpg mpeg vob ts m2ts 3gp",
    "MIDI sequence (no recorded audio)": "mid midi kar rmi",
    "program or library": "exe dll so dylib bat sh py",
    "database": "db sqlite sqlite3",
}
NON_AUDIO_EXTENSIONS: dict[str, str] = {
    ext: kind for kind, exts in _NON_AUDIO.items() for ext in exts.split()
}


def extension(name: str) -> str:
    _, dot, ext = name.rpartition(".")
    return ext.lower() if dot and _ else ""


@dataclass(frozen=True)
class FoundFile:
    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    kind: str            # "audio" (by name), "unknown" (content decides) or "ignored"
    reason: str | None = None


@dataclass(frozen=True)
class WalkIssue:
    path: str
    kind: str            # "unreadable-folder", "loop", "broken-link", "unreadable"
    reason: str


@dataclass
class WalkResult:
    files: list[FoundFile] = field(default_factory=list)
    issues: list[WalkIssue] = field(default_factory=list)
    unreadable_dirs: list[str] = field(default_factory=list)


def classify(name: str) -> tuple[str, str | None]:
    ext = extension(name)
    if ext in AUDIO_EXTENSIONS:
        return "audio", None
    kind = NON_AUDIO_EXTENSIONS.get(ext)
    if kind is not None:
        return "ignored", f"not audio ({kind}, .{ext})"
    return "unknown", None


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def _inside(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def walk(roots: Iterable[str], on_file: Callable[[int], None] | None = None,
         should_stop: Callable[[], bool] | None = None) -> WalkResult:
    """Collect the files under ``roots`` (folders or single files), each real file once.

    ``roots`` should have their symbolic links resolved. A link that points inside a root is not
    followed (what it points to is reached by its real path), so each file gets exactly one path
    whatever the order of the walk; links to places outside the roots are followed.
    """
    result = WalkResult()
    roots = list(roots)
    root_folders = [r for r in roots if os.path.isdir(r)]
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()

    def add_file(path: str, st: os.stat_result) -> None:
        ident = (st.st_dev, st.st_ino)
        if ident in seen_files:
            return  # a hard link or a symlink to a file already found
        seen_files.add(ident)
        kind, reason = classify(os.path.basename(path))
        result.files.append(FoundFile(path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, kind, reason))
        if on_file is not None:
            on_file(len(result.files))

    stack: list[str] = []
    for root in roots:
        try:
            st = os.stat(root)
        except OSError as exc:
            result.issues.append(WalkIssue(root, "unreadable", f"cannot read: {exc.strerror or exc}"))
            result.unreadable_dirs.append(root)
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) not in seen_dirs:
                seen_dirs.add((st.st_dev, st.st_ino))
                stack.append(root)
        elif stat.S_ISREG(st.st_mode):
            add_file(root, st)

    while stack:
        if should_stop is not None and should_stop():
            break
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            result.issues.append(WalkIssue(folder, "unreadable-folder",
                                           f"cannot list the folder: {exc.strerror or exc}"))
            result.unreadable_dirs.append(folder)
            continue
        subdirs = []
        for entry in entries:
            if is_hidden(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                if entry.is_symlink():
                    result.issues.append(WalkIssue(entry.path, "broken-link", "broken symbolic link"))
                continue
            except OSError as exc:
                result.issues.append(WalkIssue(entry.path, "unreadable", f"cannot read: {exc.strerror or exc}"))
                result.unreadable_dirs.append(entry.path)  # it may be a folder: keep its tracks as they are
                continue
            if entry.is_symlink() and _inside(os.path.realpath(entry.path), root_folders):
                continue  # reached by its real path
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in seen_dirs:
                    if entry.is_symlink():
                        result.issues.append(WalkIssue(entry.path, "loop",
                                                       "symbolic link to a folder already scanned; skipped"))
                    continue
                seen_dirs.add(ident)
                subdirs.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                add_file(entry.path, st)
        stack.extend(reversed(subdirs))  # depth-first, in name order
    return result
