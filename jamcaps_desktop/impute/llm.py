"""Imputation with a local language model (GGUF through llama-cpp-python): the llm, hybrid and paper methods.

The default model, Gemma 3 270M, is a base model: it continues text rather than following
instructions, so the prompt is a few-shot document. Each neighbour that has the field is one example
("Track: <its metadata> / Genre: ["Jazz", "Soul"]"), the track itself comes last, and the model
completes its line. The completion is constrained by a grammar made from a JSON schema (an array of
1 to n strings, each one of the allowed names), then validated against the vocabulary. Text from tags
is data: it is written into the prompt as one JSON-quoted line, cut short, and whatever it says, the
answer can only be a list of vocabulary names.

- ``llm``: the allowed names are the whole field vocabulary; the confidence of a value is the vote's
  confidence for it (how much the neighbours support it), or a floor where no neighbour named it.
- ``hybrid``: where the vote is clear (its best value at or above ``clear``), the vote stands and the
  model is not run; otherwise the model chooses among the vote's candidates.
- ``paper``: the JamendoMaxCaps recipe as a reference point: the first 5 of the 10 neighbours as
  "Caption / Metadata" pairs (the metadata text stands in for captions until captions exist), free
  completion with no grammar, and the values found in the text afterwards.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jamcaps_desktop.impute.vocabulary import FieldVocabulary
from jamcaps_desktop.impute.vote import Candidate, Neighbour, choose, vote

MAX_TEXT_CHARS = 240
MAX_EXAMPLES = 10
LLM_FLOOR = 0.2  # confidence of a value the model chose that no neighbour named
HYBRID_CLEAR = 0.6
LABELS = {"genre": "Genre", "mood": "Mood", "instruments": "Instruments"}

Complete = Callable[[str, dict[str, Any] | None, int], str]  # (prompt, JSON schema or None, max tokens) -> text


def quoted(text: str) -> str:
    """One line of data: control characters and line breaks removed, cut short, JSON-quoted."""
    flat = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return json.dumps(flat[:MAX_TEXT_CHARS], ensure_ascii=False)


def schema_for(names: list[str], most: int) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "enum": sorted(set(names))}, "minItems": 1,
            "maxItems": most}


def prompt_for(field_name: str, examples: list[tuple[str, list[str]]], query: str) -> str:
    label = LABELS.get(field_name, field_name.capitalize())
    lines = [f"Music tracks and their {field_name}.", ""]
    for text, values in reversed(examples[:MAX_EXAMPLES]):  # the nearest example last, next to the query
        lines += [f"Track: {quoted(text)}", f"{label}: {json.dumps(values, ensure_ascii=False)}", ""]
    lines += [f"Track: {quoted(query)}", f"{label}:"]
    return "\n".join(lines)


def parse_values(text: str, vocabulary: FieldVocabulary, most: int) -> list[str]:
    """Canonical values from a completion: a JSON list if there is one, else names found in the text."""
    found: list[str] = []
    match = re.search(r"\[.*?\]", text, flags=re.S)
    items: list[Any] = []
    if match:
        try:
            items = json.loads(match.group(0))
        except json.JSONDecodeError:
            items = []
    if not isinstance(items, list) or not items:
        items = re.split(r"[,;/\n]| and ", text.split("\n\n")[0])
    for item in items:
        value = vocabulary.canonical(str(item)) if isinstance(item, str | int | float) else None
        if value and value not in found:
            found.append(value)
    return found[:most]


@dataclass
class LlmResult:
    candidates: list[Candidate]
    prompt_tokens: int = 0
    ran_model: bool = True


def llm_impute(complete: Complete, field_name: str, vocabulary: FieldVocabulary, neighbours: list[Neighbour],
               texts: dict[int, str], query: str, *, most: int, power: float, allowed: list[str] | None = None,
               ) -> list[Candidate]:
    """The model's choice for the field, each value with the vote's confidence for it (see the module)."""
    voted = {c.value: c for c in vote(neighbours, power=power)}
    examples = [(texts.get(n.track_id, ""), [vocabulary.name(v) for v in n.values]) for n in neighbours if n.values]
    names = [vocabulary.name(v) for v in (allowed if allowed is not None else list(vocabulary.values))]
    answer = complete(prompt_for(field_name, examples, query), schema_for(names, most), 16 * most)
    chosen = parse_values(answer, vocabulary, most)
    if allowed is not None:
        chosen = [v for v in chosen if v in allowed]
    return [Candidate(v, voted[v].confidence if v in voted else LLM_FLOOR, voted[v].support if v in voted else [])
            for v in chosen]


def hybrid_impute(complete: Complete, field_name: str, vocabulary: FieldVocabulary, neighbours: list[Neighbour],
                  texts: dict[int, str], query: str, *, most: int, power: float, threshold: float,
                  clear: float = HYBRID_CLEAR) -> tuple[list[Candidate], bool]:
    """The vote where it is clear; the model choosing among the vote's candidates where it is not.
    Returns the candidates and whether the model ran."""
    candidates = vote(neighbours, power=power)
    if not candidates or candidates[0].confidence >= clear:
        return choose(candidates, field_name, threshold), False
    allowed = [c.value for c in candidates[:8]]
    return llm_impute(complete, field_name, vocabulary, neighbours, texts, query, most=most, power=power,
                      allowed=allowed), True


def paper_impute(complete: Complete, field_name: str, vocabulary: FieldVocabulary, neighbours: list[Neighbour],
                 texts: dict[int, str], query: str, *, most: int) -> list[Candidate]:
    """The paper's recipe: five "Caption / Metadata" pairs, free completion, values parsed afterwards."""
    label = LABELS.get(field_name, field_name.capitalize())
    lines = []
    for neighbour in [n for n in neighbours if n.values][:5]:
        metadata = {label: [vocabulary.name(v) for v in neighbour.values]}
        lines += [f"Caption: {texts.get(neighbour.track_id, '')[:MAX_TEXT_CHARS]}",
                  f"Metadata: {json.dumps(metadata, ensure_ascii=False)}", ""]
    lines += [f"Caption: {query[:MAX_TEXT_CHARS]}", "Metadata:"]
    answer = complete("\n".join(lines), None, 24 * most).split("Caption:")[0]
    return [Candidate(v, LLM_FLOOR) for v in parse_values(answer, vocabulary, most)]


class LlamaCompleter:
    """A GGUF model through llama-cpp-python: greedy completion, optionally constrained by a JSON schema."""

    def __init__(self, model_path: str | os.PathLike[str], *, context: int = 2048, threads: int | None = None) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise RuntimeError("the llm methods need llama-cpp-python: pip install -e '.[llm]'") from exc
        self._llama = Llama(model_path=str(model_path), n_ctx=context, n_threads=threads or os.cpu_count() or 1,
                            seed=0, verbose=False)
        self._grammars: dict[str, Any] = {}
        self.calls = 0
        self.prompt_tokens = 0

    def __call__(self, prompt: str, schema: dict[str, Any] | None, max_tokens: int) -> str:
        from llama_cpp import LlamaGrammar

        grammar = None
        if schema is not None:
            key = json.dumps(schema, sort_keys=True)
            if key not in self._grammars:
                self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
            grammar = self._grammars[key]
        tokens = self._llama.tokenize(prompt.encode("utf-8"))
        limit = self._llama.n_ctx() - max_tokens - 8
        if len(tokens) > limit:  # keep the end (the query and the nearest examples) when the prompt is too long
            prompt = self._llama.detokenize(tokens[-limit:]).decode("utf-8", "ignore")
        self.calls += 1
        self.prompt_tokens += min(len(tokens), limit)
        out = self._llama(prompt, max_tokens=max_tokens, temperature=0.0, grammar=grammar,
                          stop=None if grammar else ["\n\n", "Caption:"])
        return str(out["choices"][0]["text"])
