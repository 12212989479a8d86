"""Measuring imputation on MTG-Jamendo-style metadata: hide a field, retrieve neighbours, predict, score.

The TSV (TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION, SPLIT0, then tags such as ``genre---rock``,
``instrument---piano``, ``mood/theme---happy``) gives each track its artist, album and tags. Every
track's full metadata text is embedded and indexed. For each query track and each field it has, the
field is hidden: the query is the text without it, its neighbours are the nearest other tracks that
have the field, and the method predicts the field from them. Tracks of the first split tune each
method's parameters (the vote's power and threshold); the scores are those of the second split (by
default ``train`` and ``validation``).

Scores per field and method: micro precision, recall and F1 over all (track, value) pairs, macro F1
over the vocabulary's values, top-1 accuracy (the best value is one of the true ones) and coverage
(the share of queries that got any value). The baseline predicts the most frequent value of the
tuning split for every track.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jamcaps_desktop.impute.vocabulary import Vocabulary, load_vocabulary
from jamcaps_desktop.impute.vote import DEFAULT_POWER, DEFAULT_THRESHOLD, Neighbour, choose, vote
from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback, no_progress
from jamcaps_desktop.similar.metadata import metadata_text

log = logging.getLogger(__name__)

TSV_CATEGORIES = {"genre": "genre", "instrument": "instruments", "mood/theme": "mood"}
FIELDS = ("genre", "mood", "instruments")
THRESHOLDS = [round(0.05 * i, 2) for i in range(2, 15)]  # 0.10 … 0.70
POWERS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
SEARCH_FACTOR = 10  # candidates searched per neighbour wanted: the neighbours must have the field


class EvaluationCancelled(Exception):
    pass


@dataclass
class EvalTrack:
    track_id: str
    artist: str
    album: str
    split: str
    tags: dict[str, list[str]] = field(default_factory=dict)  # field -> canonical values


def read_tsv(path: str | Path, vocabulary: Vocabulary | None = None) -> list[EvalTrack]:
    """Tracks of an MTG-Jamendo-style TSV, tags mapped onto the vocabulary (unknown tags are dropped)."""
    vocabulary = vocabulary or load_vocabulary()
    tracks = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader)
        if header[:3] != ["TRACK_ID", "ARTIST_ID", "ALBUM_ID"]:
            raise ValueError(f"{path}: not an MTG-Jamendo-style TSV (its header is {header[:3]})")
        for row in reader:
            if len(row) < 6:
                continue
            track = EvalTrack(row[0], row[1], row[2], row[5] if len(row) > 5 else "")
            for tag in row[6:]:
                category, _sep, value = tag.partition("---")
                name = TSV_CATEGORIES.get(category)
                canonical = vocabulary.canonical(name, value) if name else None
                if name and canonical and canonical not in track.tags.setdefault(name, []):
                    track.tags[name].append(canonical)
            tracks.append(track)
    return tracks


def track_text(track: EvalTrack, vocabulary: Vocabulary, hidden: str | None = None) -> str:
    tags: dict[str, list[str]] = {"artist": [track.artist], "album": [track.album]}
    for name, values in track.tags.items():
        tags[name] = [vocabulary.fields[name].name(v) for v in values]
    return metadata_text(tags, leave_out=[hidden] if hidden else [])


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    top1: int = 0
    covered: int = 0
    queries: int = 0
    per_value: dict[str, list[int]] = field(default_factory=dict)  # value -> [tp, fp, fn]

    def add(self, predicted: list[str], truth: list[str]) -> None:
        self.queries += 1
        if predicted:
            self.covered += 1
            self.top1 += predicted[0] in truth
        for value in set(predicted) | set(truth):
            counts = self.per_value.setdefault(value, [0, 0, 0])
            if value in predicted and value in truth:
                self.tp += 1
                counts[0] += 1
            elif value in predicted:
                self.fp += 1
                counts[1] += 1
            else:
                self.fn += 1
                counts[2] += 1

    def summary(self) -> dict[str, float]:
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s = [2 * tp / (2 * tp + fp + fn) if tp else 0.0 for tp, fp, fn in self.per_value.values()]
        return {"precision": round(precision, 4), "recall": round(recall, 4), "f1_micro": round(f1, 4),
                "f1_macro": round(float(np.mean(f1s)) if f1s else 0.0, 4),
                "top1_accuracy": round(self.top1 / self.queries, 4) if self.queries else 0.0,
                "coverage": round(self.covered / self.queries, 4) if self.queries else 0.0, "queries": self.queries}


def evaluate(tsv: str | Path, encoder: Any, *, k: int = 10, tune_split: str = "train", test_split: str = "validation",
             limit: int | None = None, tune_limit: int = 2000, progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None, cache: str | Path | None = None,
             encoder_identity: str = "", complete: Any = None, llm_limit: int = 100) -> dict[str, Any]:
    """Scores of the vote and the most-frequent baseline per field (see the module's docstring)."""
    from jamcaps_desktop.similar.index import usearch_index_class

    Index = usearch_index_class()

    progress = progress or no_progress
    cancel = cancel or CancelToken()
    embed = _Embedder(encoder, progress, cancel, Path(cache) if cache else None, encoder_identity)
    vocabulary = load_vocabulary()
    started = time.monotonic()
    tracks = read_tsv(tsv, vocabulary)
    texts = [track_text(t, vocabulary) for t in tracks]
    progress(Progress("embed", 0, len(texts), message="embedding the metadata"))
    vectors = embed(texts, "embed")
    index = Index(ndim=vectors.shape[1], metric="cos", dtype="f16")
    index.add(np.arange(len(tracks), dtype=np.uint64), vectors)
    embed_s = time.monotonic() - started

    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"tracks": len(tracks), "k": k, "fields": {}}
    for name in FIELDS:
        if cancel.cancelled:
            break
        having = [i for i, t in enumerate(tracks) if t.tags.get(name)]
        tune = [i for i in having if tracks[i].split == tune_split]
        test = [i for i in having if tracks[i].split == test_split]
        tune = sorted(rng.choice(tune, size=min(tune_limit, len(tune)), replace=False).tolist()) if tune else []
        test = test[:limit] if limit else test
        frequent = Counter(v for i in (tune or having) for v in tracks[i].tags[name]).most_common(1)
        baseline = [frequent[0][0]] if frequent else []

        def neighbours_of(queries: list[int], field_name: str = name) -> list[list[Neighbour]]:
            if not queries:
                return []
            query_vectors = embed([track_text(tracks[i], vocabulary, hidden=field_name) for i in queries],
                                  f"{field_name} queries")
            matches = index.search(query_vectors, k * SEARCH_FACTOR + 1)
            out = []
            for row, query in enumerate(queries):  # the k nearest of the tracks that have the field
                found = int(matches.counts[row])  # past it, the arrays are padding
                out.append([Neighbour(int(key), 1.0 - float(distance), tuple(tracks[int(key)].tags[field_name]))
                            for key, distance in zip(matches.keys[row][:found], matches.distances[row][:found],
                                                     strict=True)
                            if int(key) != query and tracks[int(key)].tags.get(field_name)][:k])
            return out

        tuning = neighbours_of(tune)
        best = (-1.0, DEFAULT_POWER, DEFAULT_THRESHOLD)
        for power in POWERS:
            voted = [vote(n, power=power) for n in tuning]
            for threshold in THRESHOLDS:
                scores = Scores()
                for query, candidates in zip(tune, voted, strict=True):
                    scores.add([c.value for c in choose(candidates, name, threshold)], tracks[query].tags[name])
                f1 = scores.summary()["f1_micro"]
                if f1 > best[0]:
                    best = (f1, power, threshold)
        _f1, power, threshold = best
        vote_scores, base_scores = Scores(), Scores()
        for query, neighbours in zip(test, neighbours_of(test), strict=True):
            truth = tracks[query].tags[name]
            vote_scores.add([c.value for c in choose(vote(neighbours, power=power), name, threshold)], truth)
            base_scores.add(baseline, truth)
        results["fields"][name] = {
            "vote": {**vote_scores.summary(), "power": power, "threshold": threshold},
            "most_frequent": {**base_scores.summary(), "value": baseline[0] if baseline else None},
        }
        if complete is not None:
            results["fields"][name].update(_language_model_scores(
                complete, tracks, texts, vocabulary, name, test, rng, neighbours_of, llm_limit, power, threshold,
                baseline, progress, cancel))
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["embedding_s"] = round(embed_s, 1)
    return results


@dataclass
class _Embedder:
    """Texts to embeddings in steps (with progress and cancel); with a cache folder, each list of texts
    is kept there, keyed by the texts and the encoder's identity, so a rerun embeds nothing again."""

    encoder: Any
    progress: ProgressCallback
    cancel: CancelToken
    cache: Path | None = None
    identity: str = ""

    def __call__(self, texts: list[str], label: str) -> np.ndarray:
        cached = None
        if self.cache is not None:
            key = hashlib.sha1(("\n".join(texts) + "\0" + self.identity).encode("utf-8")).hexdigest()
            cached = self.cache / f"{key}.npy"
            if cached.is_file():
                return np.load(cached)
        out = []
        step = 512
        for start in range(0, len(texts), step):
            if self.cancel.cancelled:
                raise EvaluationCancelled
            out.append(np.asarray(self.encoder.encode(texts[start:start + step]), dtype=np.float32))
            self.progress(Progress(label, min(start + step, len(texts)), len(texts)))
        vectors = np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.save(cached, vectors)
        return vectors


def _language_model_scores(complete: Any, tracks: list[EvalTrack], texts: list[str], vocabulary: Vocabulary,
                           name: str, test: list[int], rng: np.random.Generator, neighbours_of: Any, limit: int,
                           power: float, threshold: float, baseline: list[str], progress: ProgressCallback,
                           cancel: CancelToken) -> dict[str, Any]:
    """The llm, hybrid and paper methods on a random sample of the test tracks, beside the vote and the
    baseline on the same sample (the language model is slow: every method is compared on equal terms)."""
    from jamcaps_desktop.impute.llm import hybrid_impute, llm_impute, paper_impute
    from jamcaps_desktop.impute.vote import MAX_VALUES

    sample = sorted(rng.choice(test, size=min(limit, len(test)), replace=False).tolist()) if test else []
    field_vocabulary = vocabulary.fields[name]
    most = MAX_VALUES.get(name, 1)
    scores = {method: Scores() for method in ("vote", "most_frequent", "llm", "hybrid", "paper")}
    timings = {"llm": 0.0, "hybrid": 0.0, "paper": 0.0}
    hybrid_runs = 0
    for done, (query, neighbours) in enumerate(zip(sample, neighbours_of(sample), strict=True), start=1):
        if cancel.cancelled:
            raise EvaluationCancelled
        truth = tracks[query].tags[name]
        own = {n.track_id: texts[n.track_id] for n in neighbours}
        text = track_text(tracks[query], vocabulary, hidden=name)
        scores["vote"].add([c.value for c in choose(vote(neighbours, power=power), name, threshold)], truth)
        scores["most_frequent"].add(baseline, truth)
        started = time.monotonic()
        chosen = llm_impute(complete, name, field_vocabulary, neighbours, own, text, most=most, power=power)
        timings["llm"] += time.monotonic() - started
        scores["llm"].add([c.value for c in chosen], truth)
        started = time.monotonic()
        chosen, ran = hybrid_impute(complete, name, field_vocabulary, neighbours, own, text, most=most, power=power,
                                    threshold=threshold)
        timings["hybrid"] += time.monotonic() - started
        hybrid_runs += ran
        scores["hybrid"].add([c.value for c in chosen], truth)
        started = time.monotonic()
        chosen = paper_impute(complete, name, field_vocabulary, neighbours, own, text, most=most)
        timings["paper"] += time.monotonic() - started
        scores["paper"].add([c.value for c in chosen], truth)
        progress(Progress(f"{name} with the language model", done, len(sample)))
    out: dict[str, Any] = {}
    for method, score in scores.items():
        entry: dict[str, Any] = score.summary()
        if method in timings and sample:
            entry["tracks_per_min"] = round(len(sample) / max(timings[method], 1e-9) * 60, 1)
        if method == "hybrid":
            entry["model_ran_share"] = round(hybrid_runs / len(sample), 3) if sample else 0.0
        out[f"{method} (sample)"] = entry
    return out
