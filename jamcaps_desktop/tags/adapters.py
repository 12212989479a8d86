"""Per-format tag editing: which keys hold a field, how to set it, how to put old items back.

Each adapter works on an opened mutagen object and touches only the keys that hold the fields it is
asked to change. Before changing anything it can back up those keys' raw items (as JSON-able data)
so that an undo restores them exactly, and it can take a snapshot of every item in the tag, which
the writer compares before and after to prove that nothing else moved.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections import Counter
from typing import Any

import mutagen
import mutagen.apev2
import mutagen.asf
import mutagen.id3
import mutagen.mp4
from mutagen.id3 import Frames as ID3_FRAME_CLASSES
from mutagen.id3._tags import ID3Header

from jamcaps_desktop.tags import mapping
from jamcaps_desktop.tags.fields import FIELDS

Snapshot = Counter  # (key, digest) → count

V23_JOINER = "; "  # multiple values in an ID3v2.3 text frame (v2.3 has no native separator)


class UnsupportedFieldError(ValueError):
    """The format has no place for the field (ASF has no total-tracks attribute, for example)."""


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def _number_pair_value(number: str | None, total: str | None) -> str | None:
    if not number and not total:
        return None
    return f"{number or 0}/{total}" if total else str(number)


class TagAdapter:
    """Common interface; subclasses implement the format."""

    format_name = "?"

    def fields_supported(self) -> set[str]:
        raise NotImplementedError

    def check_supported(self, field: str) -> None:
        if field not in self.fields_supported():
            raise UnsupportedFieldError(f"{self.format_name} tags have no place for {FIELDS[field].label.lower()}")

    def keys_for(self, field: str) -> list[str]:
        """The keys currently in the tag that hold ``field`` (aliases included)."""
        raise NotImplementedError

    def set(self, field: str, values: list[str]) -> None:
        raise NotImplementedError

    def backup(self, fields: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, backup: dict[str, Any]) -> None:
        raise NotImplementedError

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    had_tags = True

    def _tags_of(self, opened: mutagen.FileType) -> Any:
        """The file's tag, created empty where it has none."""
        if opened.tags is None:
            self.had_tags = False
            opened.add_tags()
        return opened.tags

    def is_empty(self) -> bool:
        return not list(self.tags.keys()) if hasattr(self.tags, "keys") else not list(self.tags)

    def touched_keys(self, fields: list[str]) -> set[str]:
        """Every key that holds one of ``fields`` (in snapshot form, see ``norm``)."""
        return {self.norm(key) for field in fields for key in self.keys_for(field)}

    def norm(self, key: str) -> str:
        """A key as snapshots name it (formats whose keys ignore case fold it)."""
        return key


# -- ID3 ---------------------------------------------------------------------------------------
_ID3_FIELD_FRAMES = {field: frame for frame, field in mapping.ID3_FRAMES.items()}
_ID3_PAIR_FRAMES = {f: frame for frame, pair in mapping.ID3_NUMBER_PAIRS.items() for f in pair}
# v2.4-only frames mutagen's v2.3 conversion deletes; Picard keeps the sort-order ones off-spec,
# and so does this app for every such frame a file already has (change only what is set).
_V24_ONLY = {"ASPI", "EQU2", "RVA2", "SEEK", "SIGN", "TDEN", "TDRL", "TDTG", "TMOO", "TPRO", "TSOA", "TSOP",
             "TSOT", "TSST"}
_V24_CONVERTED = {"TDRC", "TDOR", "TIPL", "TMCL"}  # mutagen turns these into their v2.3 forms
_V23_ONLY = {"RVAD", "EQUA", "TRDA", "TSIZ"}       # v2.3 frames with no v2.4 form: mutagen drops them on reading


class ID3Adapter(TagAdapter):
    format_name = "ID3"

    def __init__(self, opened: mutagen.FileType, version: int | None, fileobj: Any = None) -> None:
        """``version``: 3 or 4 to write that ID3 version, None to keep the file's own (v2.4 for a new tag).

        ``fileobj`` (an MP3's file object) lets frames that mutagen drops when it reads a v2.3 tag
        (RVAD, EQUA, TRDA, TSIZ: they have no v2.4 form) be found and kept.
        """
        self.had_tags = opened.tags is not None
        if opened.tags is None:
            opened.add_tags()
            self.original_version: tuple[int, int] | None = None
        else:
            self.original_version = tuple(opened.tags.version[:2])  # type: ignore[assignment]
        self.opened = opened
        self.tags: mutagen.id3.ID3 = opened.tags
        if version is None:
            version = 3 if self.original_version == (2, 3) else 4
        self.version = version
        self.v23_only: list[mutagen.id3.Frame] = []
        if fileobj is not None and self.original_version == (2, 3):
            try:
                fileobj.seek(0)
                raw = mutagen.id3.ID3(fileobj, translate=False)
                self.v23_only = [f for f in raw.values() if f.FrameID in _V23_ONLY]
            except (mutagen.MutagenError, OSError):
                self.v23_only = []

    @property
    def converting(self) -> bool:
        """The tag is written in another ID3 version than the file had."""
        return self.original_version is not None and self.original_version != (2, self.version)

    def fields_supported(self) -> set[str]:
        return set(FIELDS)

    def keys_for(self, field: str) -> list[str]:
        if field in _ID3_PAIR_FRAMES:
            return [_ID3_PAIR_FRAMES[field]] if _ID3_PAIR_FRAMES[field] in self.tags else []
        keys: list[str] = []
        for frame in self.tags.values():
            if self._frame_field(frame) == field:
                keys.append(frame.HashKey)
        return keys

    @staticmethod
    def _frame_field(frame: mutagen.id3.Frame) -> str | None:
        fid = frame.FrameID
        if fid in mapping.ID3_FRAMES:
            return mapping.ID3_FRAMES[fid]
        if fid == "TXXX":
            return _TXXX_FIELDS.get(frame.desc.casefold())
        if fid == "COMM" and frame.desc == "":
            return "comment"
        if fid == "USLT" and frame.desc == "":
            return "lyrics"
        if fid == "UFID" and frame.owner == mapping.MB_UFID_OWNER:
            return "musicbrainz_recordingid"
        return None

    def _pair_parts(self, frame_id: str) -> tuple[str | None, str | None]:
        frame = self.tags.get(frame_id)
        if frame is None or not frame.text:
            return None, None
        number, _, total = str(frame.text[0]).partition("/")
        return number.strip() or None, total.strip() or None

    def set(self, field: str, values: list[str]) -> None:
        tags = self.tags
        if field in _ID3_PAIR_FRAMES:
            frame_id = _ID3_PAIR_FRAMES[field]
            number, total = self._pair_parts(frame_id)
            value = values[0] if values else None
            if field in ("tracknumber", "discnumber"):
                number = value
            else:
                total = value
            tags.delall(frame_id)
            text = _number_pair_value(number, total)
            if text:
                tags.add(mutagen.id3.Frames[frame_id](encoding=0, text=[text]))
            return
        for key in self.keys_for(field):
            del tags[key]
        if not values:
            return
        enc = 3
        if field == "mood" and self.version == 3:
            tags.add(mutagen.id3.TXXX(encoding=enc, desc="mood", text=values))
        elif field in _ID3_FIELD_FRAMES:
            frame_id = _ID3_FIELD_FRAMES[field]
            tags.add(mutagen.id3.Frames[frame_id](encoding=enc, text=values))
        elif field in mapping.ID3_TXXX:
            tags.add(mutagen.id3.TXXX(encoding=enc, desc=mapping.ID3_TXXX[field][0], text=values))
        elif field == "comment":
            tags.add(mutagen.id3.COMM(encoding=enc, lang="eng", desc="", text=values))
        elif field == "lyrics":
            tags.add(mutagen.id3.USLT(encoding=enc, lang="eng", desc="", text=values[0]))
        elif field == "musicbrainz_recordingid":
            tags.add(mutagen.id3.UFID(owner=mapping.MB_UFID_OWNER, data=values[0].encode("ascii")))
        else:  # pragma: no cover - every canonical field is mapped above
            raise UnsupportedFieldError(field)

    def backup(self, fields: list[str]) -> dict[str, Any]:
        # Changing the ID3 version rewrites frames the change does not name (dates, people lists),
        # so then every frame is kept, and an undo puts the whole tag back.
        full = self.converting
        keys = sorted(self.tags.keys()) if full else sorted(self.touched_keys(fields))
        frames = [{"id": self.tags[k].FrameID, "data": _b64(self.tags[k]._writeData())} for k in keys
                  if k in self.tags and not _empty_frame(self.tags[k])]
        return {"format": "id3", "fields": fields, "frames": frames, "full": full, "had_tags": self.had_tags,
                "touched": sorted(self.touched_keys(fields)),
                "version": list(self.original_version) if self.original_version else None}

    def restore(self, backup: dict[str, Any]) -> None:
        if backup.get("full"):
            self.tags.clear()
        else:
            for key in self.touched_keys(backup["fields"]):
                del self.tags[key]
        header = ID3Header.__new__(ID3Header)
        header.version = (2, 4, 0)
        header._flags = 0
        for item in backup["frames"]:
            frame = ID3_FRAME_CLASSES[item["id"]]._fromData(header, 0, _unb64(item["data"]))
            self.tags.add(frame)
        if backup.get("version"):
            self.version = 3 if tuple(backup["version"]) == (2, 3) else 4

    def is_empty(self) -> bool:
        return not self.tags.keys() and not self.v23_only

    def snapshot(self) -> Snapshot:
        snap: Snapshot = Counter()
        for frame in self.tags.values():
            if _empty_frame(frame):
                continue
            snap[(frame.HashKey, _frame_digest(frame))] += 1
        for raw in getattr(self.tags, "unknown_frames", []):
            snap[("unknown-frame", _digest(bytes(raw)))] += 1
        for frame in self.v23_only:
            snap[(frame.HashKey, _frame_digest(frame))] += 1
        return snap

    def prepare_save(self) -> dict[str, Any]:
        """mutagen.save() keyword arguments; for v2.3, convert frames the way Picard does."""
        if self.version == 4:
            return {"v2_version": 4}
        tags = self.tags
        if self.converting:
            if "TMOO" in tags:
                mood = tags.pop("TMOO")
                if not any(k.casefold() == "txxx:mood" for k in tags):
                    tags.add(mutagen.id3.TXXX(encoding=mood.encoding, desc="mood", text=mood.text))
            if "TDRL" in tags and "TXXX:RELEASEDATE" not in tags:
                released = tags.pop("TDRL")
                tags.add(mutagen.id3.TXXX(encoding=3, desc="RELEASEDATE", text=[str(t) for t in released.text]))
        kept = [frame for frame in tags.values() if frame.FrameID in _V24_ONLY]
        tags.update_to_v23()
        for frame in kept + self.v23_only:
            tags.add(frame)
        return {"v2_version": 3, "v23_sep": V23_JOINER}


_TXXX_FIELDS = mapping.reverse(mapping.ID3_TXXX, fold_case=True)


def _frame_digest(frame: mutagen.id3.Frame) -> str:
    """A frame's content, whatever text encoding it is stored in (v2.3 has no UTF-8)."""
    if hasattr(frame, "encoding"):
        frame = copy.copy(frame)
        frame.encoding = mutagen.id3.Encoding.UTF8
    return _digest(frame.FrameID.encode(), frame._writeData())


def _empty_frame(frame: mutagen.id3.Frame) -> bool:
    """A text frame holding no text: mutagen cannot write it back, and it carries nothing to keep."""
    text = getattr(frame, "text", None)
    if isinstance(text, list):
        return all(str(item) == "" for item in text)
    return False


# -- Vorbis comments ---------------------------------------------------------------------------
_VORBIS_FIELDS = mapping.reverse(mapping.VORBIS, fold_case=True)


class VorbisAdapter(TagAdapter):
    format_name = "Vorbis comment"

    def __init__(self, opened: mutagen.FileType) -> None:
        self.opened = opened
        self.tags = self._tags_of(opened)  # a list of (key, value) pairs

    def fields_supported(self) -> set[str]:
        return set(mapping.VORBIS)

    def keys_for(self, field: str) -> list[str]:
        # A track number and its total are one pair here: "3/12" in TRACKNUMBER holds both.
        fields = set(_VORBIS_PAIRS.get(field, (field,)))
        return sorted({key for key, _ in self.tags if _VORBIS_FIELDS.get(key.casefold()) in fields})

    def norm(self, key: str) -> str:
        return key.upper()

    def _remove_keys(self, keys: set[str]) -> None:
        folded = {k.casefold() for k in keys}
        self.tags[:] = [(k, v) for k, v in self.tags if k.casefold() not in folded]

    def _values_of(self, field: str) -> list[str]:
        return [v for k, v in self.tags if _VORBIS_FIELDS.get(k.casefold()) == field]

    def set(self, field: str, values: list[str]) -> None:
        if field in _VORBIS_PAIRS:
            self._set_pair(field, values)
            return
        self._remove_keys(set(self.keys_for(field)))
        self.tags.extend((mapping.VORBIS[field][0], value) for value in values)

    def _set_pair(self, field: str, values: list[str]) -> None:
        number_field, total_field = _VORBIS_PAIRS[field]
        numbers = [v.partition("/")[0].strip() for v in self._values_of(number_field)]
        totals = self._values_of(total_field) or [
            v.partition("/")[2].strip() for v in self._values_of(number_field) if v.partition("/")[2].strip()]
        if field == number_field:
            numbers = values
        else:
            totals = values
        self._remove_keys(set(self.keys_for(field)))
        self.tags.extend((mapping.VORBIS[number_field][0], value) for value in numbers if value)
        for key in mapping.VORBIS[total_field][:2]:  # Picard writes both spellings; readers differ
            self.tags.extend((key, value) for value in totals[:1] if value)

    def backup(self, fields: list[str]) -> dict[str, Any]:
        keys = {k.casefold() for k in self.touched_keys(fields)}
        return {"format": "vorbis", "fields": fields, "had_tags": self.had_tags,
                "touched": sorted(self.touched_keys(fields)),
                "items": [[k, v] for k, v in self.tags if k.casefold() in keys]}

    def restore(self, backup: dict[str, Any]) -> None:
        self._remove_keys(set(self.touched_keys(backup["fields"])))
        self.tags.extend((k, v) for k, v in backup["items"])

    def snapshot(self) -> Snapshot:
        snap: Snapshot = Counter()
        for key, value in self.tags:
            snap[(key.upper(), _digest(value.encode("utf-8", "surrogatepass")))] += 1
        for picture in getattr(self.opened, "pictures", []) or []:
            snap[("PICTURE", _digest(picture.write()))] += 1
        return snap


_VORBIS_PAIRS = {
    "tracknumber": ("tracknumber", "totaltracks"), "totaltracks": ("tracknumber", "totaltracks"),
    "discnumber": ("discnumber", "totaldiscs"), "totaldiscs": ("discnumber", "totaldiscs"),
}


# -- MP4 ---------------------------------------------------------------------------------------
_MP4_ATOM_FIELDS = mapping.reverse(mapping.MP4_ATOMS, fold_case=False)
_MP4_FREEFORM_FIELDS = mapping.reverse(mapping.MP4_FREEFORM, fold_case=True)
_MP4_PAIR_ATOMS = {f: atom for atom, pair in mapping.MP4_NUMBER_PAIRS.items() for f in pair}


def _mp4_value_to_json(value: Any) -> dict[str, Any]:
    if isinstance(value, mutagen.mp4.MP4FreeForm):
        return {"t": "freeform", "data": _b64(bytes(value)), "format": int(value.dataformat)}
    if isinstance(value, mutagen.mp4.MP4Cover):
        return {"t": "cover", "data": _b64(bytes(value)), "format": int(value.imageformat)}
    if isinstance(value, bool):
        return {"t": "bool", "v": value}
    if isinstance(value, int):
        return {"t": "int", "v": value}
    if isinstance(value, tuple):
        return {"t": "tuple", "v": list(value)}
    if isinstance(value, bytes):
        return {"t": "bytes", "data": _b64(value)}
    return {"t": "str", "v": str(value)}


def _mp4_value_from_json(item: dict[str, Any]) -> Any:
    kind = item["t"]
    if kind == "freeform":
        return mutagen.mp4.MP4FreeForm(_unb64(item["data"]), dataformat=item["format"])
    if kind == "cover":
        return mutagen.mp4.MP4Cover(_unb64(item["data"]), imageformat=item["format"])
    if kind == "tuple":
        return tuple(item["v"])
    if kind == "bytes":
        return _unb64(item["data"])
    return item["v"]


class MP4Adapter(TagAdapter):
    format_name = "MP4"

    def __init__(self, opened: mutagen.FileType) -> None:
        self.opened = opened
        self.tags: mutagen.mp4.MP4Tags = self._tags_of(opened)

    def fields_supported(self) -> set[str]:
        return set(mapping.MP4_ATOMS) | set(mapping.MP4_FREEFORM) | set(_MP4_PAIR_ATOMS)

    def _key_field(self, key: str) -> str | None:
        if key in _MP4_ATOM_FIELDS:
            return _MP4_ATOM_FIELDS[key]
        if key.startswith(mapping.ITUNES_FREEFORM):
            return _MP4_FREEFORM_FIELDS.get(key[len(mapping.ITUNES_FREEFORM):].casefold())
        return None

    def keys_for(self, field: str) -> list[str]:
        if field in _MP4_PAIR_ATOMS:
            return [_MP4_PAIR_ATOMS[field]] if _MP4_PAIR_ATOMS[field] in self.tags else []
        return sorted(key for key in self.tags if self._key_field(key) == field)

    def set(self, field: str, values: list[str]) -> None:
        if field in _MP4_PAIR_ATOMS:
            atom = _MP4_PAIR_ATOMS[field]
            number, total = (self.tags.get(atom) or [(0, 0)])[0]
            value = int(values[0]) if values else 0
            if field in ("tracknumber", "discnumber"):
                number = value
            else:
                total = value
            if number or total:
                self.tags[atom] = [(number, total)]
            elif atom in self.tags:
                del self.tags[atom]
            return
        for key in self.keys_for(field):
            del self.tags[key]
        if not values:
            return
        if field in mapping.MP4_ATOMS:
            atom = mapping.MP4_ATOMS[field][0]
            self.tags[atom] = [int(values[0])] if atom == "tmpo" else list(values)
        else:
            key = mapping.ITUNES_FREEFORM + mapping.MP4_FREEFORM[field][0]
            self.tags[key] = [mutagen.mp4.MP4FreeForm(v.encode("utf-8")) for v in values]

    def backup(self, fields: list[str]) -> dict[str, Any]:
        keys = self.touched_keys(fields)
        items = {k: [_mp4_value_to_json(v) for v in self.tags[k]] for k in sorted(keys) if k in self.tags}
        return {"format": "mp4", "fields": fields, "had_tags": self.had_tags, "items": items,
                "touched": sorted(self.touched_keys(fields))}

    def restore(self, backup: dict[str, Any]) -> None:
        for key in self.touched_keys(backup["fields"]):
            self.tags.pop(key, None)
        for key, values in backup["items"].items():
            self.tags[key] = [_mp4_value_from_json(v) for v in values]

    def snapshot(self) -> Snapshot:
        snap: Snapshot = Counter()
        for key, values in self.tags.items():
            for value in values if isinstance(values, list) else [values]:
                encoded = repr(_mp4_value_to_json(value)).encode("utf-8", "surrogatepass")
                snap[(key, _digest(encoded))] += 1
        return snap


# -- APEv2 -------------------------------------------------------------------------------------
_APE_FIELDS = mapping.reverse(mapping.APEV2, fold_case=True)
_APE_PAIR_KEYS = {f: key for key, pair in mapping.APEV2_NUMBER_PAIRS.items() for f in pair}


class APEv2Adapter(TagAdapter):
    format_name = "APEv2"

    def __init__(self, tags: mutagen.apev2.APEv2, had_tags: bool = True) -> None:
        self.tags = tags
        self.had_tags = had_tags

    def fields_supported(self) -> set[str]:
        return set(mapping.APEV2) | set(_APE_PAIR_KEYS)

    def keys_for(self, field: str) -> list[str]:
        if field in _APE_PAIR_KEYS:
            existing = self._existing_key(_APE_PAIR_KEYS[field])
            return [existing] if existing else []
        return sorted(key for key in self.tags if _APE_FIELDS.get(key.casefold()) == field)

    def norm(self, key: str) -> str:
        return key.casefold()

    def _existing_key(self, wanted: str) -> str | None:
        for key in self.tags:
            if key.casefold() == wanted.casefold():
                return key
        return None

    def set(self, field: str, values: list[str]) -> None:
        if field in _APE_PAIR_KEYS:
            base = _APE_PAIR_KEYS[field]
            key = self._existing_key(base) or base
            number, total = None, None
            if key in self.tags:
                number, _, total = str(self.tags[key]).partition("/")
            value = values[0] if values else None
            if field in ("tracknumber", "discnumber"):
                number = value
            else:
                total = value
            text = _number_pair_value(number or None, total or None)
            if text:
                self.tags[key] = text
            elif key in self.tags:
                del self.tags[key]
            return
        for key in self.keys_for(field):
            del self.tags[key]
        if values:
            self.tags[mapping.APEV2[field][0]] = "\x00".join(values)

    def backup(self, fields: list[str]) -> dict[str, Any]:
        keys = [key for field in fields for key in self.keys_for(field)]
        items = {k: {"kind": self.tags[k].kind, "data": _b64(self._raw(self.tags[k]))} for k in sorted(keys)}
        return {"format": "apev2", "fields": fields, "had_tags": self.had_tags, "items": items,
                "touched": sorted(self.touched_keys(fields))}

    def restore(self, backup: dict[str, Any]) -> None:
        for key in [key for field in backup["fields"] for key in self.keys_for(field)]:
            if key in self.tags:
                del self.tags[key]
        for key, item in backup["items"].items():
            data = _unb64(item["data"])
            kind = item["kind"]
            value = data if kind == mutagen.apev2.BINARY else data.decode("utf-8")
            self.tags[key] = mutagen.apev2.APEValue(value, kind)

    @staticmethod
    def _raw(value: Any) -> bytes:
        return value.value if isinstance(value.value, bytes) else str(value.value).encode("utf-8", "surrogatepass")

    def snapshot(self) -> Snapshot:
        snap: Snapshot = Counter()
        for key, value in self.tags.items():
            snap[(key.casefold(), _digest(bytes([value.kind]), self._raw(value)))] += 1
        return snap


# -- ASF ---------------------------------------------------------------------------------------
_ASF_FIELDS = mapping.reverse(mapping.ASF, fold_case=True)
_ASF_PAIR_KEYS = {f: key for key, pair in mapping.ASF_NUMBER_PAIRS.items() for f in pair}


def _asf_to_json(attribute: Any) -> dict[str, Any]:
    value = attribute.value
    if isinstance(value, bytes):
        encoded: Any = {"b": _b64(value)}
    else:
        encoded = {"v": value}
    return {"type": attribute.TYPE, "language": attribute.language, "stream": attribute.stream, **encoded}


def _asf_from_json(item: dict[str, Any]) -> Any:
    value = _unb64(item["b"]) if "b" in item else item["v"]
    return mutagen.asf.ASFValue(value, item["type"], language=item.get("language"), stream=item.get("stream"))


class ASFAdapter(TagAdapter):
    format_name = "ASF"

    def __init__(self, opened: mutagen.FileType) -> None:
        self.opened = opened
        self.tags: mutagen.asf.ASFTags = self._tags_of(opened)

    def fields_supported(self) -> set[str]:
        return set(mapping.ASF) | set(_ASF_PAIR_KEYS)

    def keys_for(self, field: str) -> list[str]:
        if field in _ASF_PAIR_KEYS:
            return [_ASF_PAIR_KEYS[field]] if _ASF_PAIR_KEYS[field] in self.tags else []
        return sorted({key for key in self.tags.keys() if _ASF_FIELDS.get(key.casefold()) == field})  # noqa: SIM118 - ASFTags iterates pairs

    def set(self, field: str, values: list[str]) -> None:
        if field in _ASF_PAIR_KEYS:
            key = _ASF_PAIR_KEYS[field]
            number, total = None, None
            if key in self.tags:
                number, _, total = str(self.tags[key][0].value).partition("/")
            value = values[0] if values else None
            if field == "discnumber":
                number = value
            else:
                total = value
            text = _number_pair_value(number or None, total or None)
            if text:
                self.tags[key] = [text]
            elif key in self.tags:
                del self.tags[key]
            return
        for key in self.keys_for(field):
            del self.tags[key]
        if values:
            self.tags[mapping.ASF[field][0]] = list(values)

    def backup(self, fields: list[str]) -> dict[str, Any]:
        keys = self.touched_keys(fields)
        items = {k: [_asf_to_json(a) for a in self.tags[k]] for k in sorted(keys) if k in self.tags}
        return {"format": "asf", "fields": fields, "had_tags": self.had_tags, "items": items,
                "touched": sorted(self.touched_keys(fields))}

    def restore(self, backup: dict[str, Any]) -> None:
        for key in self.touched_keys(backup["fields"]):
            if key in self.tags:
                del self.tags[key]
        for key, items in backup["items"].items():
            self.tags[key] = [_asf_from_json(i) for i in items]

    def snapshot(self) -> Snapshot:
        snap: Snapshot = Counter()
        for key, attributes in self.tags.items():
            for attribute in attributes:
                snap[(key, _digest(repr(_asf_to_json(attribute)).encode("utf-8", "surrogatepass")))] += 1
        return snap
