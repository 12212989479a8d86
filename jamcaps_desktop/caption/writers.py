"""Writing a caption from a track's evidence: by template, or by the local language model, checked.

The template composes one or two sentences from the evidence alone (the way LP-MusicCaps built the
captions it was trained on from tags), so it cannot say anything unsupported. The language model
writes more freely from a completion prompt (a base model: a few evidence → caption examples, then
the track's evidence); its caption is kept only if every genre, instrument and mood word in it is in
the evidence (``ungrounded``), otherwise the template's caption is used instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jamcaps_desktop.caption.evidence import Evidence, describe_key, payload
from jamcaps_desktop.impute.vocabulary import Vocabulary, loose

CHECKED_FIELDS = ("genre", "mood", "instruments")
# vocabulary values that are everyday words as often as claims about the music ("a deep bass", "for a
# film"): a caption may use them freely
EVERYDAY_WORDS = {"film", "movie", "game", "party", "summer", "sport", "travel", "holiday", "children", "background",
                  "action", "drama", "adventure", "documentary", "advertising", "commercial", "corporate", "trailer",
                  "christmas", "nature", "space", "love", "groove", "fun", "cool", "retro", "deep", "hard",
                  "soundscape", "ambiental", "beat", "bell", "pad", "computer", "contemporary", "world", "club"}
MAX_CAPTION_CHARS = 400

# Few-shot examples written for this app: evidence -> caption (the base model continues the pattern).
EXAMPLES = [
    ({"genre": ["Rock"], "instruments": ["Electric Guitar", "Drums"], "mood": ["Energetic"], "bpm": 140,
      "key": "E minor"},
     "An energetic rock track driven by electric guitar and drums, at a brisk 140 BPM in E minor."),
    ({"genre": ["Ambient"], "instruments": ["Synthesizer"], "mood": ["Calm"], "vocals": ["Instrumental"],
      "bpm": 70},
     "A calm, slow ambient piece built from soft synthesizer layers, instrumental throughout, at about 70 BPM."),
    ({"genre": ["Classical"], "instruments": ["Piano"], "key": "C major"},
     "A classical piano piece in C major."),
]


def _names(evidence: Evidence, vocabulary: Vocabulary, name: str) -> list[str]:
    field = vocabulary.fields.get(name)
    return [field.name(v) if field else v for v in evidence.values.get(name, [])]


def _in_sentence(name: str) -> str:
    """A value's name inside a sentence: lower case, except acronyms ("R&B", "EDM")."""
    return name if re.search(r"[A-Z]{2}|[A-Z]&[A-Z]", name) else name.lower()


def _vowel_sound(phrase: str) -> bool:
    """Whether ``phrase`` is said starting with a vowel ("an R&B track", "an 80s track", "an ambient one")."""
    word = phrase.split(" ", 1)[0]
    if re.match(r"[A-Z]{2}|[A-Z]&", word):  # letters said by name
        return word[0] in "AEFHILMNORSX"
    return word[:1].lower() in "aeiou8"


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def template_caption(evidence: Evidence, vocabulary: Vocabulary) -> str:
    """One or two sentences from the evidence alone."""
    moods = [_in_sentence(m) for m in _names(evidence, vocabulary, "mood")[:2]]
    genres = [_in_sentence(g) for g in _names(evidence, vocabulary, "genre")[:2]]
    instruments = [_in_sentence(i) for i in _names(evidence, vocabulary, "instruments")[:4]]
    vocals = evidence.values.get("vocals", [])
    sound = [s.lower() for s in _names(evidence, vocabulary, "sound")[:1]]
    speed = [s.lower() for s in _names(evidence, vocabulary, "speed")[:1]]
    adjectives = ([", ".join(moods)] if moods else []) + [s for s in speed if s not in moods] + sound
    noun = "song" if "vocal" in vocals else ("piece" if not genres else "track")
    described = " ".join(adjectives + ([_join(genres)] if genres else []) + [noun])
    article = "An" if _vowel_sound(described) else "A"
    sentence = f"{article} {described}"
    if instruments:
        sentence += f" with {_join(instruments)}"
    if "instrumental" in vocals:
        sentence += ", instrumental"
    details = []
    if evidence.bpm:
        details.append(f"at about {round(evidence.bpm)} BPM")
    if evidence.key:
        details.append(f"in {describe_key(evidence.key)}")
    if details:
        sentence += ", " + " ".join(details)
    if not (moods or genres or instruments or vocals or sound):
        return ""  # nothing said of what it sounds like: no caption rather than an empty one
    return sentence + "."


def _vocabulary_terms(vocabulary: Vocabulary) -> dict[str, tuple[str, str]]:
    """Loose spelling -> (field, value) for every value name and synonym of the checked fields."""
    terms: dict[str, tuple[str, str]] = {}
    for name in CHECKED_FIELDS:
        field = vocabulary.fields.get(name)
        if field is None:
            continue
        for value, written in field.values.items():
            if value in EVERYDAY_WORDS:
                continue
            for spelling in (value, written):
                key = loose(spelling)
                if len(key) >= 3:
                    terms.setdefault(key, (name, value))
        for synonym, value in field.synonyms.items():
            key = loose(synonym)
            if len(key) >= 4 and value in field.values and value not in EVERYDAY_WORDS:
                terms.setdefault(key, (name, value))
    return terms


def ungrounded(caption: str, evidence: Evidence, vocabulary: Vocabulary) -> list[str]:
    """Genre, instrument and mood words of ``caption`` that the evidence does not support."""
    allowed = evidence.allowed_terms()
    words = re.findall(r"[\w&'-]+", caption.lower())
    terms = _vocabulary_terms(vocabulary)
    found: list[str] = []
    for size in (3, 2, 1):  # longer phrases first ("electric guitar" before "guitar")
        for start in range(len(words) - size + 1):
            phrase = loose(" ".join(words[start:start + size]))
            match = terms.get(phrase)
            if match and match[1] not in allowed and " ".join(words[start:start + size]) not in found:
                found.append(" ".join(words[start:start + size]))
    # a word inside an allowed phrase ("guitar" of "electric guitar") is allowed
    allowed_words = {w for value in allowed for w in re.findall(r"[a-z]+", vocabulary_name(vocabulary, value).lower())}
    return [term for term in found if not set(term.split()) <= allowed_words]


def vocabulary_name(vocabulary: Vocabulary, value: str) -> str:
    for field in vocabulary.fields.values():
        if value in field.values:
            return field.name(value)
    return value


def llm_prompt(evidence: Evidence, vocabulary: Vocabulary) -> str:
    lines = ["Short descriptions of music tracks, written only from the facts given.", ""]
    for facts, caption in EXAMPLES:
        lines += [f"Facts: {json.dumps(facts, ensure_ascii=False)}", f"Caption: {caption}", ""]
    lines += [f"Facts: {json.dumps(payload(evidence, vocabulary), ensure_ascii=False)}", "Caption:"]
    return "\n".join(lines)


def llm_caption(complete: Any, evidence: Evidence, vocabulary: Vocabulary) -> tuple[str, str]:
    """(caption, how): the model's caption when it is grounded, else the template's (how says which)."""
    fallback = template_caption(evidence, vocabulary)
    if not payload(evidence, vocabulary):
        return fallback, "template (no evidence)"
    text = complete(llm_prompt(evidence, vocabulary), None, 80)
    text = " ".join(text.strip().split("\n")[0].split())[:MAX_CAPTION_CHARS].strip()
    if len(text) < 12:
        return fallback, "template (the model wrote nothing usable)"
    extra = ungrounded(text, evidence, vocabulary)
    if extra:
        return fallback, f"template (the model named {', '.join(extra[:3])}, which the evidence does not support)"
    return text, "llm"
