"""Checking and normalising values before they are staged or written."""

from __future__ import annotations

import re
import uuid

from jamcaps_desktop.tags.fields import FIELDS, MULTI_VALUE_FIELDS
from jamcaps_desktop.tags.keys import parse_key

MAX_VALUE_CHARS = 100_000
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")
# ID3 reads a genre that is a number, or starts with "(number)", "(RX)" or "(CR)", as a reference to
# its old genre table: such a value cannot be stored as written.
_GENRE_REFERENCE = re.compile(r"^(\d+|RX|CR|\(.*)$")
_NUMBER_FIELDS = {"tracknumber", "totaltracks", "discnumber", "totaldiscs"}
_MBID_FIELDS = {name for name in FIELDS if name.startswith("musicbrainz_")}
# Fields with a closed set of values: the value written, and the spellings read as it (compared in
# lower case, spaces, hyphens and underscores ignored).
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "vocals": {"Vocal": ("vocal", "vocals", "voice", "sung", "singing", "withvocals"),
               "Instrumental": ("instrumental", "novocals", "novocal", "novoice", "instrumentalonly")},
    "sound": {"Acoustic": ("acoustic", "unplugged"), "Electric": ("electric", "electronic", "electrical", "plugged")},
    "speed": {"Slow": ("slow",), "Medium": ("medium", "moderate", "midtempo", "mid"), "Fast": ("fast", "quick")},
}
_CHOICE_LOOKUP = {field: {spelling: value for value, spellings in choices.items() for spelling in spellings}
                  for field, choices in CHOICES.items()}


class InvalidValueError(ValueError):
    """A value that cannot be stored in a field; the message says why, in plain words."""


def normalise(field: str, values: list[str]) -> list[str]:
    """Return the values as they will be written, or raise InvalidValueError.

    An empty list means "remove this field from the file".
    """
    if field not in FIELDS:
        raise InvalidValueError(f"unknown field {field!r}; known fields: {', '.join(FIELDS)}")
    cleaned: list[str] = []
    for raw in values:
        value = raw.replace("\x00", "").strip()
        if not value:
            continue
        if len(value) > MAX_VALUE_CHARS:
            raise InvalidValueError(f"{field}: a value longer than {MAX_VALUE_CHARS} characters")
        cleaned.append(_normalise_one(field, value))
    if len(cleaned) > 1 and field not in MULTI_VALUE_FIELDS:
        raise InvalidValueError(f"{field} holds one value; got {len(cleaned)}")
    return list(dict.fromkeys(cleaned))


def _normalise_one(field: str, value: str) -> str:
    if field == "genre" and _GENRE_REFERENCE.match(value):
        raise InvalidValueError(f"genre {value!r} would be read as an ID3 genre code (a number, RX, CR or a "
                                f"value starting with '('); use the genre's name")
    if field in MULTI_VALUE_FIELDS and ";" in value:
        raise InvalidValueError(f"{field}: ';' separates values; give each value on its own ({value!r})")
    if field == "bpm":
        try:
            number = float(value.replace(",", "."))
        except ValueError:
            raise InvalidValueError(f"bpm must be a number, not {value!r}") from None
        if not 0 < number < 1000:
            raise InvalidValueError(f"bpm {value!r} is out of range")
        return str(round(number))
    if field == "key":
        canonical = parse_key(value)
        if canonical is None:
            raise InvalidValueError(f"key {value!r} is not a musical key; write it like C, F#m, Bb or Ebm "
                                    "(Camelot and Open Key codes are understood too)")
        return canonical
    if field in CHOICES:
        found = _CHOICE_LOOKUP[field].get(re.sub(r"[\s_\-]+", "", value.casefold()))
        if found is None:
            raise InvalidValueError(f"{field} is one of {', '.join(CHOICES[field])}, not {value!r}")
        return found
    if field in _NUMBER_FIELDS:
        if not value.isdigit() or int(value) <= 0:
            raise InvalidValueError(f"{field} must be a positive whole number, not {value!r}")
        return str(int(value))
    if field in ("date", "originaldate") and not _DATE.match(value):
        raise InvalidValueError(f"{field} must look like YYYY, YYYY-MM or YYYY-MM-DD, not {value!r}")
    if field in _MBID_FIELDS:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise InvalidValueError(f"{field} must be a MusicBrainz id (a UUID), not {value!r}") from None
    return value
