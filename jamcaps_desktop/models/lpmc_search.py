"""Beam search for the LP-MusicCaps captioner with the per-step work on the model's device.

A search step over 50,265 log-probabilities per row is heavy arithmetic, and a key/value cache that
follows the beams is megabytes a step: both stay where the model runs. Per step, only the ``2·beams``
best candidates of each chunk (scores and indices) come back to the host, and only the chosen tokens,
their parent rows and their scores go out. The host keeps the bookkeeping that is small and branchy:
finished hypotheses, early stopping, which candidates become the next beams.

Two graphs, built from the checkpoint's weights like those of ``models.lpmc``:

- ``build_cross_cache``: the encoder's states → every decoder layer's cross-attention keys and values,
  once per search (a step would otherwise project them again for every token);
- ``build_search_step``: one decoding step of every row. It reorders the rows' caches and token
  histories by their parents, runs BART's decoder on the newest token, turns the logits into
  log-probabilities (float32), applies the generation rules (no repeated n-grams, end of sequence
  forbidden before the minimum length, a forced token), adds each row's running score and returns each
  chunk's best ``2·beams`` candidates over all its beams (ties in index order, as a stable sort gives).

``search`` drives either these graphs (``OnnxSteps``, through ONNX Runtime's I/O binding, the caches
left on the device between steps) or anything with the same two methods (the PyTorch port's
``export.lpmc_torch.TorchSteps``), and gives the same sequences as the host-side reference
``models.lpmc.beam_search``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from jamcaps_desktop.models.lpmc import (
    LAYER_NORM_EPS,
    PREFIX,
    Builder,
    add_hypothesis,
    best_hypotheses,
    generation_rules,
)

INT_MAX = np.iinfo(np.int64).max
MICROSOFT = "com.microsoft"  # ONNX Runtime's own operators (fused layer norm, bias + GELU)
# the score of a token the rules forbid: far below any sum of log-probabilities, and finite even when a few
# such scores add up (CUDA's TopK gives no valid index for −∞)
FORBIDDEN = float(np.finfo(np.float32).min) / 4


def _heads(cfg: dict[str, Any]) -> tuple[int, int, int]:
    heads = int(cfg["decoder_attention_heads"])
    return int(cfg["decoder_layers"]), heads, int(cfg["d_model"]) // heads


def _cross_infos(layer: int, kind: int, heads: int, head_dim: int, chunks: str) -> list[Any]:
    from onnx import helper

    return [helper.make_tensor_value_info(f"cross_key_{layer}", kind, [chunks, 1, heads, head_dim, "positions"]),
            helper.make_tensor_value_info(f"cross_value_{layer}", kind, [chunks, 1, heads, "positions", head_dim])]


def build_cross_cache(weights: dict[str, np.ndarray], cfg: dict[str, Any], half: bool = False):  # -> ModelProto
    """``encoder_hidden`` [B, S, d] (float32) → per layer ``cross_key_i`` [B, 1, H, d/H, S] (transposed for
    the product with the queries) and ``cross_value_i`` [B, 1, H, S, d/H], in the graph's precision (float16
    with ``half``). The 1 broadcasts over a chunk's beams."""
    from onnx import TensorProto, helper

    b = Builder(weights, cfg, half)
    layers, heads, head_dim = _heads(cfg)
    hidden = b.inside("encoder_hidden")
    split = b.ints(0, 0, heads, head_dim)
    kind = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    outputs = []
    for layer in range(layers):
        key = f"{PREFIX}decoder.layers.{layer}.encoder_attn"
        k = b.node("Reshape", [b.linear(hidden, key + ".k_proj"), split])             # [B, S, H, hd]
        v = b.node("Reshape", [b.linear(hidden, key + ".v_proj"), split])
        b.g.nodes.append(helper.make_node("Unsqueeze", [b.node("Transpose", [k], perm=[0, 2, 3, 1]), b.ints(1)],
                                          [f"cross_key_{layer}"]))
        b.g.nodes.append(helper.make_node("Unsqueeze", [b.node("Transpose", [v], perm=[0, 2, 1, 3]), b.ints(1)],
                                          [f"cross_value_{layer}"]))
        outputs += _cross_infos(layer, kind, heads, head_dim, "batch")
    return b.model([helper.make_tensor_value_info("encoder_hidden", TensorProto.FLOAT, ["batch", "positions", b.d])],
                   outputs, "lpmc-cross-cache")


def build_search_step(weights: dict[str, np.ndarray], cfg: dict[str, Any], half: bool = False):  # -> ModelProto
    """One step of the search for every row (N = chunks × beams), inputs:

    - ``tokens`` [N] int64: each row's newest token; ``parents`` [N] int64: the row of the previous step it
      continues; ``sequences`` [N', L] int64: the previous step's rows' tokens (L = 0 at the start);
    - ``past_key_i`` [N', H, d/H, L] (transposed for the product with the queries) and ``past_value_i``
      [N', H, L, d/H]: the previous step's ``present_*`` (L = 0 at the start), and ``cross_key_i`` /
      ``cross_value_i`` from ``build_cross_cache``, in the graph's precision;
    - ``beam_scores`` [N] float32, each row's score so far; ``beams`` [1] int64;
    - ``keep`` and ``penalty`` [V] float32: the step's own rules, as ``scores · keep + penalty``
      (``step_rules``: end of sequence forbidden before the minimum length, a forced token).

    Outputs: ``top_scores`` [N / beams, 2·beams] float32, and ``top_beams`` and ``top_tokens`` (int64): each
    chunk's best candidates over all its beams, best first; ``next_sequences`` [N, L + 1] and
    ``present_key_i`` / ``present_value_i`` for the next step.

    A step sees one token per row, so the graph works on [N, d] rows: heads are split and merged by
    reshapes alone, the cached keys are kept transposed, the query's scale is folded into its weights and
    the self-attention's three projections are one product; each residual connection, its bias and its
    layer norm are one ONNX Runtime ``SkipLayerNormalization``, and the feed-forward bias and GELU one
    ``BiasGelu``. A step's time is mostly the launching of its kernels when a batch is small, so the
    fewer the better."""
    from onnx import TensorProto, helper

    b = Builder(weights, cfg, half)
    layers, heads, head_dim = _heads(cfg)
    d = b.d
    kind = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    table = b.w(PREFIX + "shared.weight")
    vocabulary = table.shape[0]
    b.g.nodes.append(helper.make_node("Concat", [b.node("Gather", ["sequences", "parents"], axis=0),
                                                 b.node("Unsqueeze", ["tokens", b.ints(1)])], ["next_sequences"],
                                      axis=1))                                             # [N, L + 1]
    embedding = b.c(table, "embed_tokens")
    x = b.node("Gather", [embedding, "tokens"], axis=0)                                    # [N, d]
    if cfg.get("scale_embedding"):
        x = b.node("Mul", [x, b.scalar(math.sqrt(d))])
    past_length = b.node("Shape", ["past_value_0"], start=2, end=3)                       # [1]
    position = b.node("Slice", [b.c(b.w(PREFIX + "decoder.embed_positions.weight"), "positions"),
                                b.node("Add", [past_length, b.ints(2)]), b.node("Add", [past_length, b.ints(3)]),
                                b.ints(0)])                                                 # [1, d]
    x = b.layer_norm(b.node("Add", [x, position]), PREFIX + "decoder.layernorm_embedding")
    scale = head_dim ** -0.5

    def gemm(rows: str, kernel: np.ndarray, bias: np.ndarray) -> str:
        return b.node("Gemm", [rows, b.c(kernel, "kernel"), b.c(bias, "bias")])

    def matmul(rows: str, key: str) -> str:
        return b.node("MatMul", [rows, b.c(b.w(key + ".weight").T, "kernel")])

    def projection(key: str, factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        return b.w(key + ".weight").T * factor, b.w(key + ".bias") * factor

    def residual(rows: str, update: str, bias_key: str, norm_key: str) -> str:
        """LayerNorm(rows + update + bias) in one kernel (ONNX Runtime's SkipLayerNormalization)."""
        return b.g.node("SkipLayerNormalization", [update, rows, b.c(b.w(norm_key + ".weight"), "gamma"),
                                                   b.c(b.w(norm_key + ".bias"), "beta"),
                                                   b.c(b.w(bias_key + ".bias"), "bias")],
                        domain=MICROSOFT, epsilon=LAYER_NORM_EPS)

    per_chunk_queries = b.node("Concat", [b.ints(-1), "beams", b.ints(heads, 1, head_dim)], axis=0)
    for layer in range(layers):
        key = f"{PREFIX}decoder.layers.{layer}"
        parts = [projection(f"{key}.self_attn.q_proj", scale), projection(f"{key}.self_attn.k_proj"),
                 projection(f"{key}.self_attn.v_proj")]
        qkv = gemm(x, np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts]))
        q, k, v = (b.node("Slice", [qkv, b.ints(i * d), b.ints((i + 1) * d), b.ints(1)]) for i in range(3))
        b.g.nodes.append(helper.make_node(
            "Concat", [b.node("Gather", [f"past_key_{layer}", "parents"], axis=0),
                       b.node("Reshape", [k, b.ints(-1, heads, head_dim, 1)])], [f"present_key_{layer}"], axis=3))
        b.g.nodes.append(helper.make_node(
            "Concat", [b.node("Gather", [f"past_value_{layer}", "parents"], axis=0),
                       b.node("Reshape", [v, b.ints(-1, heads, 1, head_dim)])], [f"present_value_{layer}"], axis=2))
        attention = b.node("Softmax", [b.node("MatMul", [b.node("Reshape", [q, b.ints(-1, heads, 1, head_dim)]),
                                                         f"present_key_{layer}"])], axis=-1)   # [N, H, 1, L + 1]
        context = b.node("Reshape", [b.node("MatMul", [attention, f"present_value_{layer}"]), b.ints(-1, d)])
        x = residual(x, matmul(context, f"{key}.self_attn.out_proj"), f"{key}.self_attn.out_proj",
                     key + ".self_attn_layer_norm")
        # the cross-attention: a chunk's beams against the chunk's cached keys and values
        q = b.node("Reshape", [gemm(x, *projection(f"{key}.encoder_attn.q_proj", scale)), per_chunk_queries])
        attention = b.node("Softmax", [b.node("MatMul", [q, f"cross_key_{layer}"])], axis=-1)  # [B, beams, H, 1, S]
        context = b.node("Reshape", [b.node("MatMul", [attention, f"cross_value_{layer}"]), b.ints(-1, d)])
        x = residual(x, matmul(context, f"{key}.encoder_attn.out_proj"), f"{key}.encoder_attn.out_proj",
                     key + ".encoder_attn_layer_norm")
        inner = b.g.node("BiasGelu", [matmul(x, f"{key}.fc1"), b.c(b.w(f"{key}.fc1.bias"), "bias")],
                         domain=MICROSOFT)
        x = residual(x, matmul(inner, f"{key}.fc2"), f"{key}.fc2", key + ".final_layer_norm")
    # the tied output layer reads the embedding table itself (no transposed copy of 50,265 × d)
    logits = b.node("Gemm", [x, embedding], transB=1)                                      # [N, V]
    if b.half:
        logits = b.node("Cast", [logits], to=TensorProto.FLOAT)
    bias = np.asarray(weights.get("bart.final_logits_bias", np.zeros((1, vocabulary))), dtype=np.float32)
    logits = b.node("Add", [logits, b.g.const(bias.reshape(-1), "final_logits_bias")])
    scores = b.node("LogSoftmax", [logits], axis=-1)
    scores = _apply_rules(b, scores, "next_sequences", cfg, vocabulary)
    scores = b.node("Add", [scores, b.node("Unsqueeze", ["beam_scores", b.ints(1)])])
    per_chunk = b.node("Concat", [b.ints(-1), b.node("Mul", ["beams", b.ints(vocabulary)])], axis=0)
    flat = b.node("Reshape", [scores, per_chunk])                                          # [N / beams, beams·V]
    b.g.nodes.append(helper.make_node("TopK", [flat, b.node("Mul", ["beams", b.ints(2)])], ["top_scores", "top_flat"],
                                      axis=-1, largest=1, sorted=1))
    b.g.nodes.append(helper.make_node("Div", ["top_flat", b.ints(vocabulary)], ["top_beams"]))
    b.g.nodes.append(helper.make_node("Mod", ["top_flat", b.ints(vocabulary)], ["top_tokens"]))
    int64, float32 = TensorProto.INT64, TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("tokens", int64, ["rows"]),
              helper.make_tensor_value_info("parents", int64, ["rows"]),
              helper.make_tensor_value_info("sequences", int64, ["previous", "length"]),
              helper.make_tensor_value_info("beam_scores", float32, ["rows"]),
              helper.make_tensor_value_info("beams", int64, [1]),
              helper.make_tensor_value_info("keep", float32, [vocabulary]),
              helper.make_tensor_value_info("penalty", float32, [vocabulary])]
    outputs = [helper.make_tensor_value_info("top_scores", float32, ["chunks", "candidates"]),
               helper.make_tensor_value_info("top_beams", int64, ["chunks", "candidates"]),
               helper.make_tensor_value_info("top_tokens", int64, ["chunks", "candidates"]),
               helper.make_tensor_value_info("next_sequences", int64, ["rows", "total"])]
    for layer in range(layers):
        inputs += [helper.make_tensor_value_info(f"past_key_{layer}", kind, ["previous", heads, head_dim, "past"]),
                   helper.make_tensor_value_info(f"past_value_{layer}", kind, ["previous", heads, "past", head_dim]),
                   *_cross_infos(layer, kind, heads, head_dim, "chunks")]
        outputs += [helper.make_tensor_value_info(f"present_key_{layer}", kind, ["rows", heads, head_dim, "total"]),
                    helper.make_tensor_value_info(f"present_value_{layer}", kind, ["rows", heads, "total", head_dim])]
    return b.model(inputs, outputs, "lpmc-search-step")


def _apply_rules(b: Builder, scores: str, sequences: str, cfg: dict[str, Any], vocabulary: int) -> str:
    """The generation rules on log-probabilities [N, V] (float32), given each row's tokens [N, L]: no
    repeated n-gram, then the step's own rules (``keep``, ``penalty``)."""
    forbidden = b.g.const(np.array(FORBIDDEN, dtype=np.float32), "forbidden")
    size = int(cfg.get("no_repeat_ngram_size", 0) or 0)
    if size > 0:
        # window j (of L − n + 1) repeats the last n − 1 tokens: then its n-th token is banned
        match = None
        for m in range(size - 1):
            window = b.node("Slice", [sequences, b.ints(m), b.ints(-(size - 1 - m)), b.ints(1)])
            end = -(size - 2 - m)
            last = b.node("Slice", [sequences, b.ints(-(size - 1 - m)), b.ints(end if end else INT_MAX), b.ints(1)])
            equal = b.node("Equal", [window, last])
            match = equal if match is None else b.node("And", [match, equal])
        if size == 1:  # every token already there is banned
            banned = sequences
        else:
            following = b.node("Slice", [sequences, b.ints(size - 1), b.ints(INT_MAX), b.ints(1)])
            banned = b.node("Where", [match, following, b.ints(vocabulary)])  # no match → a spare column
        column = b.node("Concat", [b.node("Shape", [scores], start=0, end=1), b.ints(1)], axis=0)
        padded = b.node("Concat", [scores, b.node("Expand", [forbidden, column])], axis=1)
        updates = b.node("Expand", [forbidden, b.node("Shape", [banned])])
        scattered = b.node("ScatterElements", [padded, banned, updates], axis=1)
        scores = b.node("Slice", [scattered, b.ints(0), b.ints(vocabulary), b.ints(1)])
    return b.node("Add", [b.node("Mul", [scores, "keep"]), "penalty"])


def step_rules(vocabulary: int, eos: int, eos_banned: bool, forced_token: int) -> tuple[np.ndarray, np.ndarray]:
    """A step's own rules as ``scores · keep + penalty`` over the vocabulary: a forced token scores 0 and
    every other token is forbidden; before the minimum length, end of sequence is forbidden."""
    keep = np.ones(vocabulary, dtype=np.float32)
    penalty = np.zeros(vocabulary, dtype=np.float32)
    if eos_banned:
        penalty[eos] = FORBIDDEN
    if forced_token >= 0:
        keep[:] = 0.0
        penalty[:] = FORBIDDEN
        penalty[forced_token] = 0.0
    return keep, penalty


class Steps(Protocol):
    """What ``search`` needs of a backend: the cross-attention cache made once, then steps."""

    def start(self, encoder_hidden: Any, beams: int) -> None: ...

    def step(self, tokens: np.ndarray, parents: np.ndarray, beam_scores: np.ndarray, beams: int,
             eos_banned: bool, forced_token: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each chunk's ``2·beams`` best candidates: scores, the beam each extends, and its token."""

    def finish(self) -> None:
        """Let go of the search's caches (hundreds of megabytes on the device for a large batch)."""


def search(steps: Steps, encoder_hidden: Any, cfg: dict[str, Any], *, num_beams: int = 5,
           max_length: int = 128, min_length: int = 2) -> tuple[list[list[int]], list[float]]:
    """Beam search as the original's ``generate`` runs it (early stopping, length penalty 1, no repeated
    n-grams, ``<s>`` forced first and ``</s>`` last; one beam is greedy decoding): each chunk's best sequence,
    ending with ``</s>``, and its score. The candidates come from ``steps``; the host picks the beams.
    ``encoder_hidden``: [chunks, S, d], an array or an OrtValue already on the device."""
    rules = generation_rules(cfg, max_length, min_length)
    start, eos, pad = int(cfg.get("decoder_start_token_id", 2)), rules["eos"], int(cfg.get("pad_token_id", 1))
    shape = encoder_hidden.shape
    chunks = int((shape() if callable(shape) else shape)[0])
    rows = chunks * num_beams
    steps.start(encoder_hidden, num_beams)
    beams: list[list[int]] = [[start] for _ in range(rows)]
    tokens = np.full(rows, start, dtype=np.int64)
    parents = np.arange(rows, dtype=np.int64)
    scores = np.zeros((chunks, num_beams))
    scores[:, 1:] = -1e9  # the first step grows from one beam only
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(chunks)]
    done = [False] * chunks
    while len(beams[0]) < max_length and not all(done):
        length = len(beams[0])
        forced = -1
        if rules["forced_bos"] is not None and length == 1:
            forced = int(rules["forced_bos"])
        if rules["forced_eos"] is not None and length == max_length - 1:
            forced = int(rules["forced_eos"])
        top_scores, top_beams, top_tokens = steps.step(tokens, parents, scores.reshape(-1).astype(np.float32),
                                                       num_beams, length < min_length, forced)
        next_beams: list[list[int]] = []
        next_scores = np.zeros((chunks, num_beams))
        for chunk in range(chunks):
            first = chunk * num_beams
            if done[chunk]:  # a finished chunk's rows run on, padded, until every chunk is done
                next_beams += [beams[first + i] + [pad] for i in range(num_beams)]
                tokens[first:first + num_beams] = pad
                parents[first:first + num_beams] = np.arange(first, first + num_beams)
                continue
            chosen: list[tuple[float, int, int]] = []
            candidates = zip(top_scores[chunk].tolist(), top_beams[chunk].tolist(), top_tokens[chunk].tolist(),
                             strict=True)
            for rank, (score, beam, token) in enumerate(candidates):
                if score <= FORBIDDEN / 2:  # only forbidden tokens are left (the last, forced step)
                    break
                sequence = beams[first + beam]
                if token == eos:
                    if rank >= num_beams:
                        continue
                    add_hypothesis(finished[chunk], num_beams, score / len(sequence), sequence)
                else:
                    chosen.append((score, beam, token))
                if len(chosen) == num_beams:
                    break
            # rows with no allowed continuation (only at a forced step) are kept, padded, as dead beams
            chosen += [(FORBIDDEN, i, pad) for i in range(len(chosen), num_beams)]
            for i, (score, beam, token) in enumerate(chosen):
                next_scores[chunk, i] = score
                next_beams.append([*beams[first + beam], token])
                tokens[first + i] = token
                parents[first + i] = first + beam
            if len(finished[chunk]) >= num_beams:  # early stopping: enough finished hypotheses
                done[chunk] = True
        beams, scores = next_beams, next_scores
    steps.finish()
    return best_hypotheses(beams, scores, finished, done, max_length, eos)


class OnnxSteps:
    """The search graphs on ONNX Runtime: inputs from the host, the caches bound to the session's device
    between steps (I/O binding), only the candidates copied back."""

    def __init__(self, cross_session: Any, step_session: Any, cfg: dict[str, Any]) -> None:
        self.cross_session, self.step_session = cross_session, step_session
        self.layers, self.heads, self.head_dim = _heads(cfg)
        on_gpu = step_session.get_providers()[0] == "CUDAExecutionProvider"
        self.device = "cuda" if on_gpu else "cpu"
        inputs = {i.name: i for i in step_session.get_inputs()}
        self.half = inputs["past_key_0"].type == "tensor(float16)"
        self.vocabulary = int(inputs["keep"].shape[0])
        self.eos = int(cfg.get("eos_token_id", 2))
        self._rules: dict[tuple[bool, int], tuple[Any, Any]] = {}  # a step's rules, kept on the device
        self._binding: Any = None
        self._beams: Any = None
        self._state: list[Any] | None = None  # next_sequences and the present caches of the last step

    def start(self, encoder_hidden: Any, beams: int) -> None:
        import onnxruntime as ort

        binding = self.cross_session.io_binding()
        if isinstance(encoder_hidden, np.ndarray):
            binding.bind_cpu_input("encoder_hidden", np.ascontiguousarray(encoder_hidden, dtype=np.float32))
        else:  # an OrtValue the encoder left on the device
            binding.bind_ortvalue_input("encoder_hidden", encoder_hidden)
        for output in self.cross_session.get_outputs():
            binding.bind_output(output.name, self.device)
        self.cross_session.run_with_iobinding(binding)
        cross = binding.get_outputs()
        # what stays the same for the whole search is bound once
        self._binding = step = self.step_session.io_binding()
        for layer in range(self.layers):
            step.bind_ortvalue_input(f"cross_key_{layer}", cross[2 * layer])
            step.bind_ortvalue_input(f"cross_value_{layer}", cross[2 * layer + 1])
        # kept here: an OrtValue wraps its array's memory, and older ONNX Runtime bindings keep no reference
        self._beams = ort.OrtValue.ortvalue_from_numpy(np.array([beams], dtype=np.int64))
        step.bind_ortvalue_input("beams", self._beams)
        self._state = None

    def finish(self) -> None:
        self._binding = self._beams = self._state = None

    def _rule_values(self, eos_banned: bool, forced_token: int) -> tuple[Any, Any]:
        import onnxruntime as ort

        key = (bool(eos_banned), int(forced_token))
        if key not in self._rules:
            self._rules[key] = tuple(ort.OrtValue.ortvalue_from_numpy(values, self.device, 0) for values in
                                     step_rules(self.vocabulary, self.eos, *key))
        return self._rules[key]

    def step(self, tokens: np.ndarray, parents: np.ndarray, beam_scores: np.ndarray, beams: int,
             eos_banned: bool, forced_token: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        binding = self._binding
        binding.bind_cpu_input("tokens", np.ascontiguousarray(tokens, dtype=np.int64))
        binding.bind_cpu_input("parents", np.ascontiguousarray(parents, dtype=np.int64))
        binding.bind_cpu_input("beam_scores", np.ascontiguousarray(beam_scores, dtype=np.float32))
        keep, penalty = self._rule_values(eos_banned, forced_token)
        binding.bind_ortvalue_input("keep", keep)
        binding.bind_ortvalue_input("penalty", penalty)
        names = [f"past_{kind}_{layer}" for layer in range(self.layers) for kind in ("key", "value")]
        if self._state is None:
            rows = len(tokens)
            binding.bind_cpu_input("sequences", np.zeros((rows, 0), dtype=np.int64))
            dtype = np.float16 if self.half else np.float32
            for name in names:
                shape = (rows, self.heads, self.head_dim, 0) if "key" in name else (rows, self.heads, 0, self.head_dim)
                binding.bind_cpu_input(name, np.zeros(shape, dtype=dtype))
        else:
            binding.bind_ortvalue_input("sequences", self._state[0])
            for name, value in zip(names, self._state[1:], strict=True):
                binding.bind_ortvalue_input(name, value)
        # outputs are bound afresh (a bound output keeps its shape, and the caches grow)
        for name in ("top_scores", "top_beams", "top_tokens"):
            binding.bind_output(name, "cpu")
        binding.bind_output("next_sequences", self.device)
        for layer in range(self.layers):
            binding.bind_output(f"present_key_{layer}", self.device)
            binding.bind_output(f"present_value_{layer}", self.device)
        self.step_session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self._state = outputs[3:]
        return outputs[0].numpy(), outputs[1].numpy(), outputs[2].numpy()
