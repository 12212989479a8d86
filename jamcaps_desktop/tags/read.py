"""Read the tags of an opened mutagen file into canonical fields.

Every value found becomes one :class:`TagValue`: the canonical field where the mapping knows the
key (None otherwise), the key as the file stores it, and the value as text. Pictures and binary
frames are summarised ("picture: front cover, image/jpeg, 5120 bytes") so that the library shows
that they exist without storing them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import mutagen
import mutagen.aac
import mutagen.ac3
import mutagen.apev2
import mutagen.asf
import mutagen.id3
import mutagen.mp4
import mutagen.trueaudio
from mutagen.flac import Picture

from jamcaps_desktop.tags import mapping
from jamcaps_desktop.tags.fields import MULTI_VALUE_FIELDS

_NUMBER_PAIR = re.compile(r"^\s*(\d*)\s*(?:/\s*(\d*)\s*)?$")
MAX_VALUE_CHARS = 100_000  # lyrics can be long; a runaway frame is cut, not stored whole


@dataclass(frozen=True)
class TagValue:
    field: str | None
    raw_key: str
    value: str


@dataclass
class TagReadResult:
    values: list[TagValue]
    formats: list[str]  # the tag blocks found: "id3v2.4", "vorbis", "mp4", "apev2", "asf"


def _clean(value: str) -> str:
    value = value.replace("\x00", "").strip()
    return value[:MAX_VALUE_CHARS]


_NUMBER_FIELDS = {"tracknumber", "totaltracks", "discnumber", "totaldiscs"}


def _split_multi(field: str | None, value: str) -> list[str]:
    """Multi-value fields stored as one string (as ID3v2.3 must) are split on ';'."""
    if field not in MULTI_VALUE_FIELDS:
        return [value]
    return [p.strip() for p in value.split(";") if p.strip()]


def _emit(field: str | None, raw_key: str, values: Iterable[object]) -> Iterator[TagValue]:
    for item in values:
        text = _clean(str(item))
        if not text:
            continue
        if field in _NUMBER_FIELDS and text.isdigit():
            text = str(int(text))  # "03" and "3" are the same track number
        for part in _split_multi(field, text):
            yield TagValue(field, raw_key, part)


def _number_pair(raw_key: str, text: str, fields: tuple[str, str]) -> Iterator[TagValue]:
    match = _NUMBER_PAIR.match(text)
    if not match:
        yield TagValue(None, raw_key, _clean(text))
        return
    number, total = match.groups()
    if number and int(number):  # "0/12": a total with no number
        yield TagValue(fields[0], raw_key, str(int(number)))
    if total and int(total):
        yield TagValue(fields[1], raw_key, str(int(total)))


def _picture_summary(kind: str, mime: str | None, size: int) -> str:
    parts = ["picture", kind]
    if mime:
        parts.append(mime)
    return f"{parts[0]}: {', '.join(parts[1:])}, {size} bytes"


_PICTURE_TYPES = {
    0: "other", 1: "file icon", 2: "other file icon", 3: "front cover", 4: "back cover", 5: "leaflet",
    6: "media", 7: "lead artist", 8: "artist", 9: "conductor", 10: "band", 11: "composer",
    12: "lyricist", 13: "recording location", 14: "during recording", 15: "during performance",
    16: "video capture", 17: "fish", 18: "illustration", 19: "band logo", 20: "publisher logo",
}


def _picture_kind(type_id: int) -> str:
    return _PICTURE_TYPES.get(int(type_id), f"type {int(type_id)}")


# -- ID3 ---------------------------------------------------------------------------------------
_TXXX = mapping.reverse(mapping.ID3_TXXX, fold_case=True)


def read_id3(tags: mutagen.id3.ID3) -> Iterator[TagValue]:
    for frame in tags.values():
        frame_id = frame.FrameID
        key = frame.HashKey
        if frame_id in mapping.ID3_FRAMES:
            field = mapping.ID3_FRAMES[frame_id]
            values = frame.genres if frame_id == "TCON" else frame.text
            yield from _emit(field, key, values)
        elif frame_id in mapping.ID3_NUMBER_PAIRS:
            for text in frame.text:
                yield from _number_pair(key, str(text), mapping.ID3_NUMBER_PAIRS[frame_id])
        elif frame_id == "TXXX":
            field = _TXXX.get(frame.desc.casefold())
            yield from _emit(field, key, frame.text)
        elif frame_id == "COMM":
            field = "comment" if frame.desc == "" else None
            yield from _emit(field, key, frame.text)
        elif frame_id == "USLT":
            yield from _emit("lyrics" if frame.desc == "" else None, key, [frame.text])
        elif frame_id == "UFID":
            data = frame.data.decode("ascii", "replace")
            yield from _emit("musicbrainz_recordingid" if frame.owner == mapping.MB_UFID_OWNER else None,
                             key, [data])
        elif frame_id == "APIC":
            yield TagValue(None, key, _picture_summary(_picture_kind(frame.type), frame.mime, len(frame.data)))
        elif hasattr(frame, "text") and isinstance(frame.text, list):
            yield from _emit(None, key, frame.text)
        elif hasattr(frame, "url"):
            yield from _emit(None, key, [frame.url])
        else:
            yield TagValue(None, key, f"{frame_id} frame, {len(frame._writeData())} bytes")


# -- Vorbis comments ---------------------------------------------------------------------------
_VORBIS = mapping.reverse(mapping.VORBIS, fold_case=True)


def read_vorbis(tags: Iterable[tuple[str, str]]) -> Iterator[TagValue]:
    for key, value in tags:
        folded = key.casefold()
        if folded == "metadata_block_picture":
            yield TagValue(None, key, _vorbis_picture(value))
            continue
        field = _VORBIS.get(folded)
        if field in ("tracknumber", "discnumber") and "/" in value:
            pair = ("tracknumber", "totaltracks") if field == "tracknumber" else ("discnumber", "totaldiscs")
            yield from _number_pair(key, value, pair)
            continue
        yield from _emit(field, key, [value])


def _vorbis_picture(value: str) -> str:
    import base64
    import binascii

    try:
        picture = Picture(base64.b64decode(value))
    except (binascii.Error, ValueError, mutagen.MutagenError, EOFError):
        return f"picture: unreadable, {len(value)} base64 characters"
    return _picture_summary(_picture_kind(picture.type), picture.mime, len(picture.data))


# -- MP4 ---------------------------------------------------------------------------------------
_MP4_ATOMS = mapping.reverse(mapping.MP4_ATOMS, fold_case=False)
_MP4_FREEFORM = mapping.reverse(mapping.MP4_FREEFORM, fold_case=True)


def _mp4_text(value: object) -> str:
    if isinstance(value, mutagen.mp4.MP4FreeForm):
        if value.dataformat in (mutagen.mp4.AtomDataType.UTF8, mutagen.mp4.AtomDataType.IMPLICIT):
            return bytes(value).decode("utf-8", "replace")
        if value.dataformat == mutagen.mp4.AtomDataType.UTF16:
            return bytes(value).decode("utf-16-be", "replace")
        return f"binary data, {len(value)} bytes"
    if isinstance(value, bytes):
        return f"binary data, {len(value)} bytes"
    return str(value)


def read_mp4(tags: mutagen.mp4.MP4Tags) -> Iterator[TagValue]:
    for key, values in tags.items():
        if key in mapping.MP4_NUMBER_PAIRS:
            number_field, total_field = mapping.MP4_NUMBER_PAIRS[key]
            for number, total in values:
                if number:  # MP4 stores 0 for "none"
                    yield TagValue(number_field, key, str(number))
                if total:
                    yield TagValue(total_field, key, str(total))
            continue
        if key == "covr":
            for cover in values:
                mime = "image/png" if cover.imageformat == mutagen.mp4.MP4Cover.FORMAT_PNG else "image/jpeg"
                yield TagValue(None, key, _picture_summary("cover", mime, len(cover)))
            continue
        if key == "gnre":
            from mutagen.id3 import TCON

            values = [TCON.GENRES[v - 1] if 0 < v <= len(TCON.GENRES) else str(v) for v in values]
        if key.startswith("----:"):
            mean_name = key[5:]
            name = mean_name.split(":", 1)[1] if ":" in mean_name else mean_name
            field = _MP4_FREEFORM.get(name.casefold()) if key.startswith(mapping.ITUNES_FREEFORM) else None
        else:
            field = _MP4_ATOMS.get(key)
        if not isinstance(values, list):
            values = [values]
        yield from _emit(field, key, [_mp4_text(v) for v in values])


# -- APEv2 -------------------------------------------------------------------------------------
_APEV2 = mapping.reverse(mapping.APEV2, fold_case=True)
_APEV2_PAIRS = {k.casefold(): v for k, v in mapping.APEV2_NUMBER_PAIRS.items()}


def read_apev2(tags: mutagen.apev2.APEv2) -> Iterator[TagValue]:
    for key, value in tags.items():
        folded = key.casefold()
        if isinstance(value, mutagen.apev2.APEBinaryValue):
            data = bytes(value.value)
            if folded.startswith("cover art"):
                yield TagValue(None, key, _picture_summary(key[len("cover art"):].strip(" ()").lower()
                                                           or "cover", None, len(data)))
            else:
                yield TagValue(None, key, f"binary data, {len(data)} bytes")
            continue
        texts = list(value) if isinstance(value, mutagen.apev2.APETextValue) else [str(value)]
        if folded in _APEV2_PAIRS:
            for text in texts:
                yield from _number_pair(key, text, _APEV2_PAIRS[folded])
            continue
        yield from _emit(_APEV2.get(folded), key, texts)


# -- ASF ---------------------------------------------------------------------------------------
_ASF = mapping.reverse(mapping.ASF, fold_case=True)
_ASF_PAIRS = {k.casefold(): v for k, v in mapping.ASF_NUMBER_PAIRS.items()}


def read_asf(tags: mutagen.asf.ASFTags) -> Iterator[TagValue]:
    for key, attributes in tags.items():
        folded = key.casefold()
        for attribute in attributes:
            if isinstance(attribute, mutagen.asf.ASFByteArrayAttribute):
                label = "picture" if folded == "wm/picture" else "binary data"
                yield TagValue(None, key, f"{label}, {len(attribute.value)} bytes")
                continue
            text = str(attribute.value)
            if folded in _ASF_PAIRS:
                yield from _number_pair(key, text, _ASF_PAIRS[folded])
                continue
            yield from _emit(_ASF.get(folded), key, [text])


# -- dispatch ----------------------------------------------------------------------------------
_APE_CARRIERS = (mutagen.aac.AAC, mutagen.ac3.AC3, mutagen.trueaudio.TrueAudio)


def read_tags(opened: mutagen.FileType, path: str | None = None) -> TagReadResult:
    """Read every tag of ``opened``. ``path`` lets formats that keep tags elsewhere be searched."""
    values: list[TagValue] = []
    formats: list[str] = []
    tags = opened.tags
    _read_block(tags, values, formats)
    pictures = getattr(opened, "pictures", None)  # FLAC keeps pictures outside the comment block
    if pictures:
        for picture in pictures:
            values.append(TagValue(None, "PICTURE", _picture_summary(_picture_kind(picture.type),
                                                                     picture.mime, len(picture.data))))
    if tags is None and path is not None and isinstance(opened, _APE_CARRIERS):
        # AAC, AC3 and TTA streams often carry an APEv2 tag their mutagen class does not read.
        # (An APEv2 tag inside an MP3 is not read, as in Picard: the app writes ID3 there.)
        try:
            ape = mutagen.apev2.APEv2(path)
        except (mutagen.MutagenError, OSError):
            ape = None
        if ape is not None:
            _read_block(ape, values, formats)
    return TagReadResult(values, formats)


def _read_block(tags: object, values: list[TagValue], formats: list[str]) -> None:
    if tags is None:
        return
    if isinstance(tags, mutagen.id3.ID3):
        formats.append("id3v1" if tags.version[0] == 1 else f"id3v2.{tags.version[1]}")
        values.extend(read_id3(tags))
    elif isinstance(tags, mutagen.mp4.MP4Tags):
        formats.append("mp4")
        values.extend(read_mp4(tags))
    elif isinstance(tags, mutagen.apev2.APEv2):
        formats.append("apev2")
        values.extend(read_apev2(tags))
    elif isinstance(tags, mutagen.asf.ASFTags):
        formats.append("asf")
        values.extend(read_asf(tags))
    elif isinstance(tags, list):  # mutagen's VComment is a list of (key, value) pairs
        formats.append("vorbis")
        values.extend(read_vorbis(tags))
