"""What a caption may say about a track: its evidence.

The evidence is what the app knows, each item with where it comes from: the file's own tags and the
values a person accepted (genre, mood, instruments, vocals, sound, speed), the audio taggers' labels
that the vocabulary knows, with their probability (only those heard clearly enough), and the
measurements (BPM, key, loudness). A caption names nothing beyond it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from jamcaps_desktop.impute.derived import speed_of
from jamcaps_desktop.impute.vocabulary import Vocabulary, load_vocabulary
from jamcaps_desktop.library.database import Library

FIELDS = ("genre", "mood", "instruments", "vocals", "sound", "speed")
LABEL_FLOOR = {"genre": 0.3, "mood": 0.3, "instruments": 0.3, "vocals": 0.4, "sound": 0.4, "speed": 0.4}
MAX_HEARD = {"genre": 2, "mood": 2, "instruments": 3, "vocals": 1, "sound": 1, "speed": 1}
KEY_FLOOR = 0.5     # a key is mentioned when the estimate is at least this sure
TEMPO_FLOOR = 0.3


@dataclass
class Evidence:
    """Values per field (vocabulary ids, best first), with the source of each."""

    values: dict[str, list[str]] = field(default_factory=dict)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)   # field -> value -> tag / accepted / heard 0.62
    bpm: float | None = None
    key: str | None = None
    loudness_lufs: float | None = None
    duration_s: float | None = None
    title: str | None = None

    def add(self, name: str, value: str, source: str) -> None:
        values = self.values.setdefault(name, [])
        if value not in values:
            values.append(value)
            self.sources.setdefault(name, {})[value] = source

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    def digest(self) -> str:
        return hashlib.sha1(self.to_json().encode("utf-8")).hexdigest()

    def allowed_terms(self) -> set[str]:
        """Every vocabulary value the caption may name."""
        return {value for values in self.values.values() for value in values}


def track_evidence(library: Library, track_id: int, vocabulary: Vocabulary | None = None) -> Evidence | None:
    """The evidence for one track (None when it is not in the library or could not be read)."""
    vocabulary = vocabulary or load_vocabulary()
    row = library.conn.execute("SELECT duration, status FROM tracks WHERE id = ?", (track_id,)).fetchone()
    if row is None or row[1] != "ok":
        return None
    evidence = Evidence(duration_s=row[0])
    tags: dict[str, list[str]] = {}
    for name, value in library.conn.execute(
            "SELECT field, value FROM track_tags WHERE track_id = ? AND field IS NOT NULL ORDER BY position",
            (track_id,)):
        tags.setdefault(name, []).append(value)
    evidence.title = (tags.get("title") or [None])[0]
    for name in FIELDS:
        for value in vocabulary.canonical_values(name, tags.get(name, [])):
            evidence.add(name, value, "tag")
    for name, vals in library.conn.execute(
            "SELECT field, vals FROM proposals WHERE track_id = ? AND status = 'accepted'", (track_id,)):
        if name in FIELDS:
            for value in vocabulary.canonical_values(name, json.loads(vals)):
                evidence.add(name, value, "accepted")
    heard: dict[str, dict[str, float]] = {}
    for (labels,) in library.conn.execute(
            "SELECT labels FROM analyses WHERE track_id = ? AND status = 'ok' AND labels IS NOT NULL", (track_id,)):
        for label, probability in json.loads(labels).items():
            for name in FIELDS:
                value = vocabulary.canonical(name, label)
                if value and float(probability) >= LABEL_FLOOR[name]:
                    heard.setdefault(name, {})[value] = max(heard.get(name, {}).get(value, 0.0), float(probability))
    for name, values in heard.items():
        if name in ("vocals", "sound", "speed") and evidence.values.get(name):
            continue  # the file or a person already said which
        ranked = sorted(values.items(), key=lambda item: -item[1])[: MAX_HEARD[name]]
        for value, probability in ranked:
            evidence.add(name, value, f"heard {probability:.2f}")
    features = library.conn.execute(
        "SELECT bpm, bpm_confidence, key, key_confidence, loudness_lufs FROM track_features WHERE track_id = ?",
        (track_id,)).fetchone()
    tagged_bpm = _number((tags.get("bpm") or [None])[0])
    if tagged_bpm:
        evidence.bpm = tagged_bpm
    elif features and features[0] and (features[1] or 0) >= TEMPO_FLOOR:
        evidence.bpm = round(float(features[0]), 1)
    if tags.get("key"):
        evidence.key = tags["key"][0]
    elif features and features[2] and (features[3] or 0) >= KEY_FLOOR:
        evidence.key = str(features[2])
    if features and features[4] is not None:
        evidence.loudness_lufs = round(float(features[4]), 1)
    for name in ("vocals", "sound"):  # what the genre and instruments imply (a techno track is electric)
        if not evidence.values.get(name):
            for value in vocabulary.implied_values(name, evidence.values):
                evidence.add(name, value, "implied")
    if evidence.bpm and not evidence.values.get("speed"):
        evidence.add("speed", speed_of(evidence.bpm), "tempo")
    return evidence


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        return None
    return value if 0 < value < 1000 else None


def describe_key(key: str) -> str:
    """'F#m' -> 'F♯ minor', 'Bb' -> 'B♭ major' (TKEY notation to words)."""
    minor = key.endswith("m")
    root = key[:-1] if minor else key
    root = root.replace("#", "♯").replace("b", "♭") if len(root) > 1 else root
    return f"{root} {'minor' if minor else 'major'}"


def payload(evidence: Evidence, vocabulary: Vocabulary) -> dict[str, Any]:
    """The evidence in words (names as written into files), for prompts and exports."""
    out: dict[str, Any] = {name: [vocabulary.fields[name].name(v) for v in values]
                           for name, values in evidence.values.items() if values and name in vocabulary.fields}
    if evidence.bpm:
        out["bpm"] = round(evidence.bpm)
    if evidence.key:
        out["key"] = describe_key(evidence.key)
    return out
