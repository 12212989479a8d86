"""One notation for musical keys: ID3's TKEY convention, which the other formats' KEY fields share.

A key is written as its tonic's letter, then ``#`` or ``b`` for a sharp or flat, then ``m`` for minor
("C", "F#m", "Bb", "Ebm"); ``o`` is an off-key (atonal) track. Each of the 24 keys has one spelling,
the one its key signature uses (fewest accidentals; F# major and Ebm rather than Gb and D#m), so the
same key never reads two ways in a library. ``parse_key`` understands the spellings people and other
taggers write ("F# minor", "Gbm", "a min", "Camelot 4A", "Open Key 9m", "B♭") and returns the canonical one.
"""

from __future__ import annotations

import re

PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
MAJOR_NAMES = ["C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
MINOR_NAMES = ["Cm", "C#m", "Dm", "Ebm", "Em", "Fm", "F#m", "Gm", "G#m", "Am", "Bbm", "Bm"]
OFF_KEY = "o"

# Camelot wheel: number n, letter B (major) / A (minor); n=8 is C major / A minor, each step a fifth up
_CAMELOT_MAJOR_START = 8  # C major is 8B
_OPEN_KEY_MAJOR_START = 1  # Open Key: C major is 1d, A minor is 1m

_PATTERN = re.compile(
    r"^\s*(?P<letter>[A-Ga-g])\s*(?P<accidental>#|♯|b|♭|-sharp|-flat|\s+sharp|\s+flat)?\s*"
    r"(?P<mode>m|min|minor|moll|-moll|maj|major|dur|-dur|M)?\.?\s*$")
_CAMELOT = re.compile(r"^\s*(?:camelot\s*)?(?P<number>1[0-2]|[1-9])\s*(?P<letter>[ABab])\s*$", re.IGNORECASE)
_OPEN_KEY = re.compile(r"^\s*(?:open\s*key\s*)?(?P<number>1[0-2]|[1-9])\s*(?P<letter>[dmDM])\s*$", re.IGNORECASE)


def key_name(pitch_class: int, minor: bool) -> str:
    """The canonical name of the key on ``pitch_class`` (0 = C … 11 = B)."""
    return (MINOR_NAMES if minor else MAJOR_NAMES)[pitch_class % 12]


def key_parts(name: str) -> tuple[int, bool] | None:
    """(pitch class, minor) of a canonical or parseable key; None for off-key or unreadable text."""
    canonical = parse_key(name)
    if canonical is None or canonical == OFF_KEY:
        return None
    minor = canonical.endswith("m")
    return (MINOR_NAMES if minor else MAJOR_NAMES).index(canonical), minor


def _from_fifths(steps: int, minor: bool) -> str:
    """The key ``steps`` fifths above C major (or A minor)."""
    tonic = (7 * steps + (9 if minor else 0)) % 12
    return key_name(tonic, minor)


def parse_key(text: str) -> str | None:
    """The canonical spelling of ``text``, or None when it is not a key."""
    text = text.strip()
    if not text:
        return None
    if text.lower() in ("o", "off", "off-key", "atonal"):
        return OFF_KEY
    match = _PATTERN.match(text)
    if match:
        tonic = PITCH_CLASSES[match["letter"].upper()]
        accidental = (match["accidental"] or "").strip().lower()
        if accidental in ("#", "♯", "-sharp", "sharp"):
            tonic += 1
        elif accidental in ("b", "♭", "-flat", "flat"):
            tonic -= 1
        mode = match["mode"] or ""
        # a bare lower-case letter is minor in German usage ("a" = A minor); "M" alone means major
        minor = mode.lower() in ("m", "min", "minor", "moll", "-moll") and mode != "M"
        if not mode and match["letter"].islower() and not accidental:
            minor = True
        return key_name(tonic % 12, minor)
    match = _CAMELOT.match(text)
    if match:
        minor = match["letter"].upper() == "A"
        return _from_fifths(int(match["number"]) - _CAMELOT_MAJOR_START, minor)
    match = _OPEN_KEY.match(text)
    if match:
        minor = match["letter"].lower() == "m"
        return _from_fifths(int(match["number"]) - _OPEN_KEY_MAJOR_START, minor)
    return None
