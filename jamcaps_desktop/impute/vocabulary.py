"""The tag vocabulary imputation proposes from: canonical values per field, their written names, synonyms.

The shipped vocabulary (``resources/vocabulary.json``) starts from the MTG-Jamendo dataset's genre,
instrument and mood/theme tags. Free-form values found in files ("Hip-Hop", "Drum & Bass", "synths")
are mapped onto it through its synonyms and a loose comparison (case, spaces and punctuation ignored),
so the neighbours' tags can vote however each file spells them. A user's own ``vocabulary.json`` in
the app's config folder (same shape) adds values and synonyms.

Two-valued descriptive fields (vocals: vocal/instrumental, sound: acoustic/electric) also have
``implied`` rules: the genre and instrument values that imply one of their values, so that tracks
tagged with a voice, or as techno, count as vocal, or electric, without anyone having said so.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import platformdirs

VOCABULARY_ENV = "JAMCAPS_VOCABULARY"
FIELDS = ("genre", "mood", "instruments", "vocals", "sound", "speed")
Implied = dict[str, dict[str, dict[str, frozenset[str]]]]  # field -> value -> source field -> source values


def loose(text: str) -> str:
    """Lower case, accents and everything but letters, digits and '&' removed."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    return re.sub(r"[^a-z0-9&]+", "", text)


@dataclass
class FieldVocabulary:
    values: dict[str, str]  # canonical id -> the name written into files
    synonyms: dict[str, str] = field(default_factory=dict)  # loose synonym -> canonical id
    _lookup: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._lookup = {}
        for value, name in self.values.items():
            self._lookup[loose(value)] = value
            self._lookup[loose(name)] = value
        for synonym, value in self.synonyms.items():
            if value in self.values:
                self._lookup[loose(synonym)] = value

    def canonical(self, text: str) -> str | None:
        """The canonical id ``text`` stands for, or None when the vocabulary does not know it."""
        key = loose(text)
        if not key:
            return None
        found = self._lookup.get(key) or self._lookup.get(key.replace("&", "and"))
        if found is None and key.endswith("music") and len(key) > 5:  # AudioSet's "Rock music", "Happy music"
            found = self._lookup.get(key[:-5])
        return found

    def name(self, value: str) -> str:
        return self.values.get(value, value)


@dataclass
class Vocabulary:
    fields: dict[str, FieldVocabulary]
    implied: Implied = field(default_factory=dict)

    def implied_values(self, field_name: str, known: dict[str, list[str]]) -> dict[str, int]:
        """The values of ``field_name`` that a track's other (canonical) values imply, each with the
        number of values implying it; a track implying both values of a field implies neither."""
        hits: dict[str, int] = {}
        for value, sources in self.implied.get(field_name, {}).items():
            count = sum(1 for source, implying in sources.items() for v in known.get(source, []) if v in implying)
            if count:
                hits[value] = count
        if len(hits) > 1:
            best = max(hits.values())
            winners = [v for v, n in hits.items() if n == best]
            return {} if len(winners) > 1 else {winners[0]: best - max(n for v, n in hits.items() if v != winners[0])}
        return hits

    def canonical(self, field_name: str, text: str) -> str | None:
        vocabulary = self.fields.get(field_name)
        return vocabulary.canonical(text) if vocabulary else None

    def canonical_values(self, field_name: str, texts: list[str]) -> list[str]:
        """The distinct canonical ids of a list of free-form values (a value may hold several, split on ';')."""
        out: list[str] = []
        for text in texts:
            for part in text.split(";"):
                value = self.canonical(field_name, part)
                if value and value not in out:
                    out.append(value)
        return out


def _shipped_path() -> Path:
    return Path(__file__).resolve().parents[2] / "resources" / "vocabulary.json"


def _user_path() -> Path:
    if os.environ.get(VOCABULARY_ENV):
        return Path(os.environ[VOCABULARY_ENV])
    return Path(platformdirs.user_config_dir("jamcaps", appauthor=False)) / "vocabulary.json"


def _merge(into: dict[str, dict[str, dict[str, str]]], implied: dict[str, dict[str, dict[str, set[str]]]],
           data: dict) -> None:
    for name, spec in data.get("fields", {}).items():
        target = into.setdefault(name, {"values": {}, "synonyms": {}})
        target["values"].update(spec.get("values", {}))
        target["synonyms"].update(spec.get("synonyms", {}))
    for name, rules in data.get("implied", {}).items():
        for value, sources in rules.items():
            for source, values in sources.items():
                implied.setdefault(name, {}).setdefault(value, {}).setdefault(source, set()).update(values)


@lru_cache(maxsize=4)
def _load(shipped: Path, user: Path, user_mtime: float) -> Vocabulary:
    merged: dict[str, dict[str, dict[str, str]]] = {}
    implied: dict[str, dict[str, dict[str, set[str]]]] = {}
    _merge(merged, implied, json.loads(shipped.read_text(encoding="utf-8")))
    if user.is_file():
        _merge(merged, implied, json.loads(user.read_text(encoding="utf-8")))
    return Vocabulary({name: FieldVocabulary(spec["values"], spec["synonyms"]) for name, spec in merged.items()},
                      {name: {value: {source: frozenset(vals) for source, vals in sources.items()}
                              for value, sources in rules.items()} for name, rules in implied.items()})


def load_vocabulary() -> Vocabulary:
    """The shipped vocabulary with the user's additions (re-read when the user's file changes)."""
    user = _user_path()
    return _load(_shipped_path(), user, user.stat().st_mtime if user.is_file() else 0.0)
