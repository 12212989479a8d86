"""The imputation job: propose the genre, mood, instruments, vocals, sound and speed a track lacks.

For each track missing a field (or every track, with ``overwrite``), the job finds its nearest
neighbours (fused audio and metadata similarity), lets the k nearest that have the field vote (see ``vote``),
blends in the track's own audio taggers' labels that the vocabulary knows (a guitar the tagger heard
is evidence for "guitar"), and stores a proposal: the values (as written into files), a confidence,
the method, every candidate with its confidence, the neighbours that voted for the proposed values,
and the model versions involved. Nothing is written into files here: ``accept`` stages the proposals a
person accepts, and the safe writer writes them.

Some fields a track's own facts decide first (``derived``): its speed comes from its BPM (tagged, or
measured by the analysis), and its own genre and instrument values can imply vocal/instrumental and
acoustic/electric (a track tagged with a voice is vocal). Neighbours' values of those two fields are
likewise taken as said or as implied.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from jamcaps_desktop.impute.derived import TAGGED_TEMPO_CONFIDENCE, implied_candidate, speed_candidates
from jamcaps_desktop.impute.vocabulary import FIELDS, Vocabulary, load_vocabulary
from jamcaps_desktop.impute.vote import DEFAULT_POWER, DEFAULT_THRESHOLD, Candidate, Neighbour, choose, vote
from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.library.database import Library, utc_now
from jamcaps_desktop.similar.metadata import library_tags
from jamcaps_desktop.similar.search import DEFAULT_WEIGHTS, Searcher

log = logging.getLogger(__name__)

EVIDENCE_WEIGHT = 0.2  # share of the confidence the track's own tagger labels may contribute
SEARCH_FACTOR = 10  # neighbours searched per neighbour wanted: a field's voters are the k nearest that have it
# per field, as tuned by `jamcaps eval impute` on MTG-Jamendo's training split (the README has the scores)
VOTE_POWER: dict[str, float] = {"genre": 16.0, "mood": 32.0, "instruments": 16.0}
VOTE_THRESHOLD: dict[str, float] = {"genre": 0.15, "mood": 0.30, "instruments": 0.10}
# vocals and sound have two values each: propose one only where a clear majority of the voters say it
# (no ground truth for them in the evaluation data, so these are not tuned)
VOTE_POWER.update({"vocals": 16.0, "sound": 16.0})
VOTE_THRESHOLD.update({"vocals": 0.5, "sound": 0.5})
VOTED_FIELDS = ("genre", "mood", "instruments", "vocals", "sound")  # speed comes from the tempo alone
IMPLIED_FIELDS = ("vocals", "sound")
METHODS = ("vote", "llm", "hybrid")


@dataclass
class ImputeSummary:
    status: str
    method: str
    fields: list[str]
    tracks: int = 0
    proposals: int = 0
    without_neighbours: int = 0
    elapsed_s: float = 0.0
    per_field: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tagger_evidence(library: Library, vocabulary: Vocabulary) -> dict[int, dict[str, dict[str, float]]]:
    """Per track and field, the vocabulary values its audio taggers' labels name, with their probability
    (the highest of the labels naming a value, over the models)."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    mapping: dict[str, list[tuple[str, str]]] = {}
    for track_id, labels in library.conn.execute(
            "SELECT track_id, labels FROM analyses WHERE status = 'ok' AND labels IS NOT NULL"):
        for label, probability in json.loads(labels).items():
            if label not in mapping:  # "vocals" is evidence for the voice instrument and for a vocal track
                mapping[label] = [(name, value) for name in VOTED_FIELDS
                                  if (value := vocabulary.canonical(name, label))]
            for name, value in mapping[label]:
                values = out.setdefault(track_id, {}).setdefault(name, {})
                values[value] = max(values.get(value, 0.0), float(probability))
    return out


def known_values(tags: dict[str, list[str]], vocabulary: Vocabulary) -> tuple[dict[str, list[str]], dict[str, int]]:
    """A track's canonical values per voted field (vocals and sound as tagged, or as its other values
    imply them), and the net number of values implying each implied one."""
    known = {name: vocabulary.canonical_values(name, tags.get(name, [])) for name in VOTED_FIELDS}
    implied: dict[str, int] = {}
    for name in IMPLIED_FIELDS:
        if not known[name]:
            hits = vocabulary.implied_values(name, known)
            if hits:
                value, count = next(iter(hits.items()))
                known[name] = [value]
                implied[name] = count
    return known, implied


def track_tempi(library: Library, tags: dict[int, dict[str, list[str]]]) -> dict[int, tuple[float, float, str]]:
    """Per track: (BPM, confidence, where it came from) from its BPM tag, else the analysis' measurement."""
    out: dict[int, tuple[float, float, str]] = {}
    for track_id, bpm, confidence in library.conn.execute(
            "SELECT track_id, bpm, bpm_confidence FROM track_features WHERE bpm IS NOT NULL AND bpm > 0"):
        out[track_id] = (float(bpm), float(confidence or 0.0), "measured")
    for track_id, values in tags.items():
        for text in values.get("bpm", []):
            try:
                bpm = float(text.replace(",", "."))
            except ValueError:
                continue
            if 0 < bpm < 1000:
                out[track_id] = (bpm, TAGGED_TEMPO_CONFIDENCE, "tagged")
                break
    return out


def impute(library: Library, *, fields: list[str] | None = None, method: str = "vote", k: int = 10,
           threshold: float | None = None, overwrite: bool = False, track_ids: list[int] | None = None,
           weights: tuple[float, float] = DEFAULT_WEIGHTS, progress: ProgressCallback | None = None,
           cancel: CancelToken | None = None, complete: Any = None) -> ImputeSummary:
    """Propose values for the fields tracks lack; returns what was proposed. The llm and hybrid methods
    need ``complete``, a language model (see ``impute.llm``)."""
    if method not in METHODS:
        raise ValueError(f"the {method!r} method is not available in this version (available: {', '.join(METHODS)})")
    if method != "vote" and complete is None:
        raise ValueError(f"the {method} method needs a language model")
    fields = list(fields or FIELDS)
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise ValueError(f"cannot impute {', '.join(unknown)}; fields: {', '.join(FIELDS)}")
    progress = progress or no_progress
    cancel = cancel or CancelToken()
    started = time.monotonic()
    summary = ImputeSummary("running", method, fields)
    vocabulary = load_vocabulary()
    with library.job_lock("impute"):
        tags = library_tags(library)
        known: dict[int, dict[str, list[str]]] = {}
        implied: dict[int, dict[str, int]] = {}
        for track_id, values in tags.items():
            known[track_id], implied[track_id] = known_values(values, vocabulary)
        tempi = track_tempi(library, tags) if "speed" in fields else {}
        evidence = tagger_evidence(library, vocabulary)
        decided = set(library.conn.execute(  # a person's accept or reject stands until they change it
            "SELECT track_id, field FROM proposals WHERE status IN ('accepted', 'rejected')").fetchall())
        searcher = Searcher(library, by="both", weights=weights)
        models = dict(library.conn.execute("SELECT DISTINCT model, model_version FROM analyses").fetchall())
        models.update(dict(library.conn.execute("SELECT DISTINCT model, 'text' FROM text_embeddings").fetchall()))
        ids = track_ids if track_ids is not None else [
            t for (t,) in library.conn.execute("SELECT id FROM tracks WHERE status = 'ok' ORDER BY id")]
        todo = [t for t in ids if overwrite or any(not tags.get(t, {}).get(name) for name in fields)]
        progress(Progress("impute", 0, len(todo)))
        for done, track_id in enumerate(todo, start=1):
            if cancel.cancelled:
                break
            summary.tracks += 1
            matches = searcher.neighbours(track_id, k * SEARCH_FACTOR)
            if not matches:
                summary.without_neighbours += 1
            rows = []
            for name in fields:
                if (tags.get(track_id, {}).get(name) and not overwrite) or (track_id, name) in decided:
                    continue
                own = _own_facts(name, track_id, implied, known, tempi)
                if own is not None:
                    used, candidates = own
                    chosen = candidates[:1]
                    names = vocabulary.fields[name]
                    rows.append(_row(track_id, name, [names.name(c.value) for c in chosen], chosen[0].confidence,
                                     used, {names.name(c.value): c.confidence for c in candidates}, [], models))
                    summary.per_field[name] = summary.per_field.get(name, 0) + 1
                    continue
                if name not in VOTED_FIELDS:
                    continue
                neighbours = [Neighbour(m.track_id, m.score, tuple(known[m.track_id][name]))
                              for m in matches if known.get(m.track_id, {}).get(name)][:k]  # the k nearest that know
                power = VOTE_POWER.get(name, DEFAULT_POWER)
                floor = threshold if threshold is not None else VOTE_THRESHOLD.get(name, DEFAULT_THRESHOLD)
                candidates = vote(neighbours, evidence=evidence.get(track_id, {}).get(name),
                                  evidence_weight=EVIDENCE_WEIGHT, power=power)
                chosen = choose(candidates, name, floor)
                if method != "vote" and neighbours:
                    chosen = _ask_model(method, complete, name, vocabulary, neighbours, tags, track_id, power, floor)
                if not chosen:
                    continue
                names = vocabulary.fields[name]
                voters = {t for c in chosen for t, _s in c.support}
                support = [[m.track_id, m.score, [names.name(v) for v in known.get(m.track_id, {}).get(name, [])]]
                           for m in matches if m.track_id in voters]
                considered = {names.name(c.value): c.confidence for c in candidates[:12]}
                # no neighbour knew the field: what is proposed is the track's own taggers' word alone
                used = method if (voters or method != "vote") else "tagger"
                rows.append(_row(track_id, name, [names.name(c.value) for c in chosen], chosen[0].confidence, used,
                                 considered, support, models))
                summary.per_field[name] = summary.per_field.get(name, 0) + 1
            with library.transaction() as conn:
                conn.executemany("DELETE FROM proposals WHERE track_id = ? AND field = ? AND status = 'proposed'",
                                 [(track_id, name) for name in fields])
                conn.executemany(
                    "INSERT OR REPLACE INTO proposals (track_id, field, vals, confidence, method, candidates, "
                    "neighbours, models, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            summary.proposals += len(rows)
            progress(Progress("impute", done, len(todo)))
        summary.status = "cancelled" if cancel.cancelled else "completed"
    summary.elapsed_s = round(time.monotonic() - started, 3)
    return summary


def _row(track_id: int, name: str, values: list[str], confidence: float, method: str,
         candidates: dict[str, float], support: list[Any], models: dict[str, str]) -> tuple[Any, ...]:
    return (track_id, name, json.dumps(values, ensure_ascii=False), confidence, method,
            json.dumps(candidates, ensure_ascii=False), json.dumps(support, ensure_ascii=False), json.dumps(models),
            utc_now())


def _own_facts(name: str, track_id: int, implied: dict[int, dict[str, int]], known: dict[int, dict[str, list[str]]],
               tempi: dict[int, tuple[float, float, str]]) -> tuple[str, list[Candidate]] | None:
    """What the track's own facts say of a field (method, candidates), or None to ask the neighbours."""
    if name == "speed":
        if track_id not in tempi:
            return None
        bpm, confidence, _source = tempi[track_id]
        candidates = speed_candidates(bpm, confidence)
        return ("tempo", candidates) if candidates else None
    hits = implied.get(track_id, {}).get(name)
    if hits:
        return "derived", [implied_candidate(known[track_id][name][0], hits)]
    return None


def _ask_model(method: str, complete: Any, name: str, vocabulary: Vocabulary, neighbours: list[Neighbour],
               tags: dict[int, dict[str, list[str]]], track_id: int, power: float, floor: float) -> list[Any]:
    from jamcaps_desktop.impute.llm import hybrid_impute, llm_impute
    from jamcaps_desktop.impute.vote import MAX_VALUES
    from jamcaps_desktop.similar.metadata import metadata_text

    texts = {n.track_id: metadata_text(tags.get(n.track_id, {})) for n in neighbours}
    query = metadata_text(tags.get(track_id, {}), leave_out=[name])
    most = MAX_VALUES.get(name, 1)
    if method == "llm":
        return llm_impute(complete, name, vocabulary.fields[name], neighbours, texts, query, most=most, power=power)
    chosen, _ran = hybrid_impute(complete, name, vocabulary.fields[name], neighbours, texts, query, most=most,
                                 power=power, threshold=floor)
    return chosen


def track_proposals(library: Library, track_id: int) -> list[dict[str, Any]]:
    out = []
    for name, vals, confidence, method, candidates, neighbours, status in library.conn.execute(
            "SELECT field, vals, confidence, method, candidates, neighbours, status FROM proposals WHERE track_id = ? "
            "ORDER BY field", (track_id,)):
        out.append({"field": name, "values": json.loads(vals), "confidence": confidence, "method": method,
                    "candidates": json.loads(candidates), "neighbours": json.loads(neighbours), "status": status})
    return out


def accept(library: Library, track_ids: list[int], *, fields: list[str] | None = None,
           min_confidence: float = 0.0) -> int:
    """Stage the matching proposals for writing and mark them accepted; returns how many."""
    from jamcaps_desktop.write.batch import stage

    wanted = set(fields or FIELDS)
    chosen = [(t, name, json.loads(vals)) for t, name, vals, confidence in library.conn.execute(
        "SELECT track_id, field, vals, confidence FROM proposals WHERE status = 'proposed' ORDER BY track_id")
        if t in set(track_ids) and name in wanted and confidence >= min_confidence]
    for track_id, name, values in chosen:
        stage(library, [track_id], {name: values}, origin="proposal")
    with library.transaction() as conn:
        conn.executemany("UPDATE proposals SET status = 'accepted' WHERE track_id = ? AND field = ?",
                         [(t, name) for t, name, _v in chosen])
    return len(chosen)


def reject(library: Library, track_ids: list[int], *, fields: list[str] | None = None) -> int:
    """Reject the pending proposals of these tracks (all fields, or ``fields``): a later ``impute`` does not
    propose them again. Returns how many."""
    names = list(fields or FIELDS)
    marks = ", ".join("?" for _ in names)
    with library.transaction() as conn:
        return sum(conn.execute(f"UPDATE proposals SET status = 'rejected' WHERE track_id = ? AND status = 'proposed' "
                                f"AND field IN ({marks})", (track_id, *names)).rowcount for track_id in track_ids)
