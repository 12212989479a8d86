"""The similarity-weighted vote: what a track's nearest neighbours say about a field it lacks.

Each neighbour that has the field votes for its values with its similarity score raised to a power
(negative scores count zero; a power above 1 lets the closest neighbours outweigh a crowd of distant
ones); a value's confidence is its share of the votes cast, so neighbours that do not know the field
neither vote for nor against anything, times a support factor that grows with how many voters there
were and how similar they are (1 - exp(-Σ similarity / 2)): one remote neighbour agreeing with itself
is no certainty, ten close ones agreeing nearly is. Evidence the track itself provides (its audio taggers'
probabilities, mapped onto the vocabulary) can be blended in with a weight. The proposal is the values
whose confidence reaches a threshold, best first, at most a few per field; each keeps the neighbours
that voted for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_VALUES = {"genre": 3, "mood": 3, "instruments": 4}
DEFAULT_THRESHOLD = 0.35
DEFAULT_POWER = 1.0
SUPPORT_SCALE = 2.0  # summed similarity of the voters at which the support factor reaches 1 - 1/e


@dataclass(frozen=True)
class Neighbour:
    track_id: int
    score: float
    values: tuple[str, ...]  # canonical values of the field in question


@dataclass
class Candidate:
    value: str
    confidence: float
    support: list[tuple[int, float]] = field(default_factory=list)  # (track id, score) of the voters


def vote(neighbours: list[Neighbour], *, evidence: dict[str, float] | None = None,
         evidence_weight: float = 0.0, power: float = DEFAULT_POWER) -> list[Candidate]:
    """Every value named by a neighbour (or the evidence), with its confidence, best first."""
    total = 0.0
    similarity = 0.0
    tally: dict[str, Candidate] = {}
    for neighbour in neighbours:
        if not neighbour.values:
            continue
        weight = max(neighbour.score, 0.0) ** power
        total += weight
        similarity += max(neighbour.score, 0.0)
        for value in dict.fromkeys(neighbour.values):
            candidate = tally.setdefault(value, Candidate(value, 0.0))
            candidate.confidence += weight
            candidate.support.append((neighbour.track_id, round(neighbour.score, 4)))
    support = 1.0 - math.exp(-similarity / SUPPORT_SCALE)
    for candidate in tally.values():
        candidate.confidence = support * candidate.confidence / total if total > 0 else 0.0
    if evidence and evidence_weight > 0:
        share = evidence_weight if total > 0 else 1.0
        for value, probability in evidence.items():
            candidate = tally.setdefault(value, Candidate(value, 0.0))
            candidate.confidence = (1 - share) * candidate.confidence + share * probability
        for value, candidate in tally.items():
            if value not in evidence:
                candidate.confidence *= 1 - share
    ranked = sorted(tally.values(), key=lambda c: (-c.confidence, c.value))
    for candidate in ranked:
        candidate.confidence = round(min(max(candidate.confidence, 0.0), 1.0), 4)
    return ranked


def choose(candidates: list[Candidate], field_name: str, threshold: float = DEFAULT_THRESHOLD) -> list[Candidate]:
    """The candidates proposed: those at or above ``threshold``, at most MAX_VALUES of the field."""
    return [c for c in candidates if c.confidence >= threshold][: MAX_VALUES.get(field_name, 1)]
