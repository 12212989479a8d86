"""Change tags in an open file object, and prove afterwards that only those tags changed.

``apply_changes`` edits the file object it is given (the writer hands it a temporary copy, never
the original) and returns what it needs to verify the result and to undo it later.
``verify_changes`` reopens the edited copy and checks three things: every field set reads back as
set, every other item of the tag (frames, atoms, comments, pictures, unknown frames) is byte-for-byte
what it was, and the audio stream's facts are unchanged.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, BinaryIO

import mutagen
import mutagen.apev2

from jamcaps_desktop.scan.probe import mutagen_class
from jamcaps_desktop.tags.adapters import (
    APEv2Adapter,
    ASFAdapter,
    ID3Adapter,
    MP4Adapter,
    TagAdapter,
    VorbisAdapter,
)
from jamcaps_desktop.tags.read import TagReadResult, read_apev2, read_tags

TAG_FORMAT_BY_CONTAINER = {
    "mp3": "id3", "mpeg": "id3", "aiff": "id3", "wav": "id3", "dsf": "id3", "dff": "id3",
    "flac": "vorbis", "ogg": "vorbis",
    "mp4": "mp4",
    "asf": "asf",
    "ape": "apev2", "wavpack": "apev2", "musepack": "apev2", "tak": "apev2", "tta": "apev2", "aac": "apev2",
}
_MP3 = {"mp3", "mpeg"}
# Containers whose mutagen class does not carry APEv2 itself: the tag is opened on its own.
_STANDALONE_APE = {"tta", "aac"}
# Raw AC-3 streams have no place for tags: FFmpeg stops decoding at an appended APEv2 tag, losing
# the end of the audio, so the app refuses to write one.
UNTAGGABLE_REASONS = {
    "ac3": "raw AC-3 streams have no tag block; a tag appended to one cuts decoding short",
    "optimfrog": "OptimFROG files cannot be decoded, so they are not tagged",
}


class TagEditError(Exception):
    """The tags could not be changed or did not verify; the message is the plain reason."""


@dataclass
class EditSession:
    """An opened file with the adapter for its tag format."""

    container: str
    opened: Any               # the mutagen object (or a bare APEv2 tag for TTA/AAC/AC3)
    adapter: TagAdapter
    tag_format: str

    def save(self, fileobj: BinaryIO) -> None:
        kwargs: dict[str, Any] = {}
        if isinstance(self.adapter, ID3Adapter):
            kwargs = self.adapter.prepare_save()
        v1 = _id3v1_block(fileobj) if self.container in _MP3 else None
        fileobj.seek(0)
        self.opened.save(fileobj, **kwargs)
        if v1 is not None and _id3v1_block(fileobj) is not None:
            fileobj.seek(-128, os.SEEK_END)
            fileobj.write(v1)  # mutagen rewrites ID3v1 from the v2 tag; the file's own is kept instead

    def delete_tags(self, fileobj: BinaryIO) -> None:
        """Remove the tag block (an undo of a write that created it)."""
        fileobj.seek(0)
        if self.container in _MP3:
            mutagen.id3.delete(fileobj, delete_v1=False, delete_v2=True)
        else:
            self.opened.delete(fileobj)


def _id3v1_block(fileobj: BinaryIO) -> bytes | None:
    fileobj.seek(0, os.SEEK_END)
    if fileobj.tell() < 128:
        return None
    fileobj.seek(-128, os.SEEK_END)
    block = fileobj.read(128)
    return block if block[:3] == b"TAG" else None


def open_for_edit(fileobj: BinaryIO, container: str, codec: str | None, id3_version: int | None = None
                  ) -> EditSession:
    tag_format = TAG_FORMAT_BY_CONTAINER.get(container)
    if tag_format is None:
        raise TagEditError(UNTAGGABLE_REASONS.get(container, f"tags cannot be written to {container} files"))
    fileobj.seek(0)
    try:
        if container in _STANDALONE_APE:
            try:
                tags = mutagen.apev2.APEv2(fileobj)
                had_tags = True
            except mutagen.apev2.APENoHeaderError:
                tags, had_tags = mutagen.apev2.APEv2(), False
            return EditSession(container, tags, APEv2Adapter(tags, had_tags), tag_format)
        cls = mutagen_class(container, codec)
        if cls is None:
            raise TagEditError(f"tags cannot be written to {container} files with {codec or 'this'} audio")
        # An MP3's ID3v1 tag is not merged into the ID3v2 tag being edited; it is kept as it is.
        opened = cls(fileobj, load_v1=False) if container in _MP3 else cls(fileobj)
    except TagEditError:
        raise
    except Exception as exc:
        raise TagEditError(f"the file cannot be opened for tagging: {exc}") from exc
    if tag_format == "id3":
        adapter: TagAdapter = ID3Adapter(opened, id3_version, fileobj if container in _MP3 else None)
    elif tag_format == "vorbis":
        adapter = VorbisAdapter(opened)
    elif tag_format == "mp4":
        adapter = MP4Adapter(opened)
    elif tag_format == "asf":
        adapter = ASFAdapter(opened)
    else:
        had_tags = opened.tags is not None
        if not had_tags:
            opened.add_tags()
        adapter = APEv2Adapter(opened.tags, had_tags)
    return EditSession(container, opened, adapter, tag_format)


def all_tags(opened: Any) -> TagReadResult:
    """Every tag of an opened file, as a scan reads it."""
    if isinstance(opened, mutagen.apev2.APEv2):
        return TagReadResult(list(read_apev2(opened)), ["apev2"])
    return read_tags(opened)


def canonical_values(tags: TagReadResult) -> dict[str, list[str]]:
    """field → values as the library's reader sees them."""
    out: dict[str, list[str]] = {}
    for tag in tags.values:
        if tag.field is not None and tag.value not in out.setdefault(tag.field, []):
            out[tag.field].append(tag.value)
    return {k: v for k, v in out.items() if v}


def _save(session: EditSession, fileobj: BinaryIO) -> None:
    try:
        session.save(fileobj)
    except OSError:
        raise  # the writer names disk-full and permission errors plainly
    except Exception as exc:
        cause: BaseException | None = exc
        while cause is not None:  # mutagen wraps I/O errors in its own error types
            if isinstance(cause, OSError):
                raise cause from exc
            cause = cause.__cause__ or cause.__context__
        raise TagEditError(f"saving the tags failed: {exc}") from exc


@dataclass
class EditResult:
    tag_format: str
    old_values: dict[str, list[str]]   # the changed fields as they were
    backup: dict[str, Any]             # raw items of every touched key, for an exact undo
    before: Counter                    # snapshot of every raw item before the change
    before_fields: dict[str, list[str]]
    stream: tuple[float | None, int | None, int | None]
    converted_id3: bool                # the ID3 version changed, so converted frames are compared by value


def _stream_facts(opened: Any) -> tuple[float | None, int | None, int | None]:
    info = getattr(opened, "info", None)
    if info is None:
        return (None, None, None)
    return (getattr(info, "length", None), getattr(info, "sample_rate", None), getattr(info, "channels", None))


def apply_changes(fileobj: BinaryIO, container: str, codec: str | None, changes: dict[str, list[str]], *,
                  id3_version: int | None = None) -> EditResult:
    """Set ``changes`` (field → values, [] removes the field) in ``fileobj`` and save it."""
    session = open_for_edit(fileobj, container, codec, id3_version)
    adapter = session.adapter
    for field in changes:
        adapter.check_supported(field)
    fields = sorted(changes)
    before_fields = canonical_values(all_tags(session.opened))
    before = adapter.snapshot()
    backup = adapter.backup(fields)
    converted = isinstance(adapter, ID3Adapter) and adapter.original_version is not None \
        and adapter.original_version != (2, adapter.version)
    backup["saved_version"] = adapter.version if isinstance(adapter, ID3Adapter) else None
    stream = _stream_facts(session.opened)
    for field in fields:
        adapter.set(field, changes[field])
    _save(session, fileobj)
    old_values = {f: before_fields.get(f, []) for f in fields}
    return EditResult(session.tag_format, old_values, backup, before, before_fields, stream, converted)


def restore_backup(fileobj: BinaryIO, container: str, codec: str | None, backup: dict[str, Any]) -> EditResult:
    """Put back the raw items a write replaced (and the ID3 version it had)."""
    version = None
    if backup.get("format") == "id3" and backup.get("version"):
        version = 3 if tuple(backup["version"]) == (2, 3) else 4
    session = open_for_edit(fileobj, container, codec, version)
    adapter = session.adapter
    fields = list(backup["fields"])
    before_fields = canonical_values(all_tags(session.opened))
    before = adapter.snapshot()
    undo_backup = adapter.backup(fields)
    stream = _stream_facts(session.opened)
    adapter.restore(backup)
    converted = isinstance(adapter, ID3Adapter) and adapter.converting
    if backup.get("had_tags") is False and adapter.is_empty():
        try:
            session.delete_tags(fileobj)
        except Exception:  # a format mutagen cannot strip: leave the (empty) tag
            _save(session, fileobj)
    else:
        _save(session, fileobj)
    old_values = {f: before_fields.get(f, []) for f in fields}
    return EditResult(session.tag_format, old_values, undo_backup, before, before_fields, stream, converted)


# Frames whose raw form changes when the ID3 version changes; they are compared by value instead.
_ID3_VERSION_SENSITIVE = {"TDRC", "TDOR", "TYER", "TDAT", "TIME", "TORY", "TIPL", "TMCL", "IPLS", "TMOO", "TDRL",
                          "TXXX:mood", "TXXX:RELEASEDATE"}


def _version_sensitive(key: str) -> bool:
    return key in _ID3_VERSION_SENSITIVE or key.split(":", 1)[0] in _ID3_VERSION_SENSITIVE


def verify_changes(fileobj: BinaryIO, container: str, codec: str | None, result: EditResult,
                   expected: dict[str, list[str]]) -> TagReadResult:
    """Raise TagEditError unless the edited file holds exactly ``expected`` and nothing else moved.

    Returns every tag of the edited file, as a scan would read it.
    """
    fileobj.seek(0)
    try:
        session = open_for_edit(fileobj, container, codec)
    except TagEditError as exc:
        raise TagEditError(f"the written file cannot be read back: {exc}") from exc
    after_tags = all_tags(session.opened)
    after_fields = canonical_values(after_tags)
    for field, values in expected.items():
        found = after_fields.get(field, [])
        if found != values:
            raise TagEditError(f"{field} reads back as {found!r}, not {values!r}")
    touched = set(expected)
    after = session.adapter.snapshot()
    before = result.before

    def untouched(snapshot: Counter, adapter_keys: set[str]) -> Counter:
        kept: Counter = Counter()
        for (key, digest), count in snapshot.items():
            if key in adapter_keys:
                continue
            if result.converted_id3 and _version_sensitive(key):
                continue
            kept[(key, digest)] = count
        return kept

    touched_after = session.adapter.touched_keys(list(touched))
    touched_before = _keys_in_backup(result.backup) | touched_after
    kept_before, kept_after = untouched(before, touched_before), untouched(after, touched_after)
    if kept_before != kept_after:
        names = sorted({k for k, _ in (kept_before - kept_after) + (kept_after - kept_before)})
        if result.converted_id3:
            raise TagEditError("changing the file's ID3 version would lose frames that have no form in the "
                               f"other version ({', '.join(names[:8])}); keep the file's ID3 version")
        raise TagEditError("other tags would change: " + ", ".join(names[:8]))
    for field, values in result.before_fields.items():
        if field in touched:
            continue
        now = after_fields.get(field, [])
        if now != values and not (result.converted_id3 and field == "originaldate"
                                  and [v[:4] for v in now] == [v[:4] for v in values]):
            raise TagEditError(f"{field} would change from {values!r} to {now!r}")
    length, rate, channels = _stream_facts(session.opened)
    old_length, old_rate, old_channels = result.stream
    if (rate, channels) != (old_rate, old_channels) or (
            length is not None and old_length is not None and not math.isclose(length, old_length, abs_tol=1e-3)):
        raise TagEditError("the audio stream's facts changed")
    return after_tags


def _keys_in_backup(backup: dict[str, Any]) -> set[str]:
    """The keys (in snapshot form) a change touched, as its backup recorded them."""
    return set(backup["touched"])
