"""Fields a track's own facts decide: its speed from its tempo, vocal/instrumental and acoustic/electric
from the genre and instrument values it already has.

Speed classes are tempo ranges (slow below 90 BPM, fast from 125 BPM, medium between). A tempo close
to a boundary could belong to either side, and a measured tempo may be off by an octave, so the
confidence is the tempo's own confidence, lowered near a boundary: a measured 124 BPM is "medium" with
half the confidence of a measured 105.
"""

from __future__ import annotations

import math

from jamcaps_desktop.impute.vote import Candidate

SLOW_BELOW = 90.0
FAST_FROM = 125.0
CERTAIN_OCTAVES = 0.15      # this far (in octaves, ~11 %) from a boundary, the class is as sure as the tempo
MIN_SPEED_CONFIDENCE = 0.25    # a less certain speed is not proposed at all
TAGGED_TEMPO_CONFIDENCE = 0.95  # a BPM tag someone wrote is trusted about as much as a clear measurement
IMPLIED_CONFIDENCE = (0.6, 0.9)  # one implying value, and the most (three or more, none against)


def speed_of(bpm: float) -> str:
    if bpm < SLOW_BELOW:
        return "slow"
    return "fast" if bpm >= FAST_FROM else "medium"


def speed_candidates(bpm: float, tempo_confidence: float) -> list[Candidate]:
    """The speed class of ``bpm`` with its confidence, and the class across the nearest boundary with
    the rest; empty for a tempo that is no tempo, or too unsure to propose anything from."""
    if not math.isfinite(bpm) or bpm <= 0:
        return []
    tempo_confidence = min(max(tempo_confidence, 0.0), 1.0)
    value = speed_of(bpm)
    boundary = min((SLOW_BELOW, FAST_FROM), key=lambda b: abs(math.log2(bpm / b)))
    certainty = min(1.0, abs(math.log2(bpm / boundary)) / CERTAIN_OCTAVES)
    confidence = tempo_confidence * (0.5 + 0.5 * certainty)
    other = speed_of(boundary * (1.01 if bpm < boundary else 0.99))
    if confidence < MIN_SPEED_CONFIDENCE:
        return []
    out = [Candidate(value, round(confidence, 4))]
    if other != value and certainty < 1.0:
        out.append(Candidate(other, round(tempo_confidence * 0.5 * (1 - certainty), 4)))
    return out


def implied_candidate(value: str, hits: int) -> Candidate:
    """A value a track's own tags imply (``hits``: implying values, net of those against)."""
    low, high = IMPLIED_CONFIDENCE
    return Candidate(value, round(low + (high - low) * min(hits - 1, 2) / 2, 4))
