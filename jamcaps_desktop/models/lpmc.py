"""The LP-MusicCaps captioner (audio → caption, Doh et al. 2023) as ONNX graphs built from its checkpoint's
weights with numpy and ``onnx.helper`` (no torch), and a host-side reference of its decoding.

The network, as the official ``BartCaptionModel`` computes it in evaluation:

1. a 10-s chunk at 16 kHz → STFT (1024-point periodic Hann, hop 160, centred with reflection) → the
   power of the *real part* only (as the original computes it) → 128 HTK mel bands (the checkpoint's own
   filter bank) → dB (10·log10, floor 1e-10): [B, 128, 1001] (``log_mel``, in numpy);
2. the encoder graph: a convolution 128 → d (kernel 3) and five with stride 2, each followed by GELU
   (1001 → 32 frames), plus the checkpoint's sinusoid table; then BART's encoder (its own learned
   positions, offset 2, added on top; LayerNorm; post-LN layers);
3. the decoder graph: BART's decoder over the tokens so far, attending to the encoder's states, and the
   tied output projection plus ``final_logits_bias``: logits for every position.

Generation follows the official call: the decoder starts from ``</s>``, the first generated token is
forced to ``<s>``, end of sequence is forced at the last position and forbidden before ``min_length``,
and no 3-gram repeats. ``greedy`` and ``beam_search`` here run it on the whole-prefix decoder graph, in
numpy, as plainly as the original states it: they are the reference the captioning search
(``models.lpmc_search``: one token per step, the rules and the choice of candidates on the model's
device) is checked against.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from jamcaps_desktop.models.onnx_graph import GraphBuilder

if TYPE_CHECKING:
    import onnx

OPSET = 18
LAYER_NORM_EPS = 1e-5
SAMPLE_RATE = 16000
CHUNK_SAMPLES = 160000
N_FFT, HOP = 1024, 160
PREFIX = "bart.model."


def log_mel(audio: np.ndarray, mel_filters: np.ndarray) -> np.ndarray:
    """[B, 160000] float32 → [B, 128, 1001] dB mel, as the original front end computes it."""
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float64))
    padded = np.pad(audio, ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    frames = 1 + (padded.shape[1] - N_FFT) // HOP
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)      # periodic Hann
    spectrum = np.fft.rfft(padded[:, index] * window, axis=-1)            # [B, frames, 513]
    power = spectrum.real ** 2                                           # the real part only, as the original
    mel = power @ np.asarray(mel_filters, dtype=np.float64)               # [B, frames, 128]
    return (10.0 * np.log10(np.maximum(mel, 1e-10))).transpose(0, 2, 1).astype(np.float32)


def chunks_of(samples: np.ndarray) -> np.ndarray:
    """A track's 16-kHz samples as 10-s chunks, as the original loader cuts them: a track shorter than
    10 s is zero-padded to one chunk; otherwise whole chunks only (a trailing part is dropped)."""
    samples = np.asarray(samples, dtype=np.float32)
    if len(samples) < CHUNK_SAMPLES:
        return np.pad(samples, (0, CHUNK_SAMPLES - len(samples)))[None]
    count = len(samples) // CHUNK_SAMPLES
    return samples[: count * CHUNK_SAMPLES].reshape(count, CHUNK_SAMPLES)


class Builder:
    def __init__(self, weights: dict[str, np.ndarray], cfg: dict[str, Any], half: bool = False) -> None:
        self.weights, self.cfg = weights, cfg
        self.g = GraphBuilder()
        self.d = int(cfg["d_model"])
        self.half = half
        self.dtype = np.float16 if half else np.float32

    def inside(self, name: str) -> str:
        """A float32 graph input in the graph's own precision."""
        from onnx import TensorProto

        return self.node("Cast", [name], to=TensorProto.FLOAT16) if self.half else name

    def output(self, tensor: str, name: str) -> None:
        """A tensor as a float32 graph output called ``name``."""
        from onnx import TensorProto, helper

        self.g.nodes.append(helper.make_node("Cast", [tensor], [name], to=TensorProto.FLOAT))

    def w(self, key: str) -> np.ndarray:
        return np.asarray(self.weights[key], dtype=np.float32)

    def c(self, array: np.ndarray, label: str) -> str:
        return self.g.const(np.asarray(array, dtype=np.float32).astype(self.dtype), label)

    def ints(self, *values: int) -> str:
        return self.g.const(np.array(values, dtype=np.int64), "ints")

    def scalar(self, value: float) -> str:
        return self.c(np.array(value), "scalar")

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        return self.g.node(op, inputs, **attrs)

    def linear(self, x: str, key: str) -> str:
        out = self.node("MatMul", [x, self.c(self.w(key + ".weight").T, "kernel")])
        return self.node("Add", [out, self.c(self.w(key + ".bias"), "bias")])

    def layer_norm(self, x: str, key: str) -> str:
        return self.node("LayerNormalization", [x, self.c(self.w(key + ".weight"), "gamma"),
                                                self.c(self.w(key + ".bias"), "beta")], axis=-1,
                         epsilon=LAYER_NORM_EPS)

    def gelu(self, x: str) -> str:
        """x · (1 + erf(x / √2)) / 2, in the order ONNX Runtime recognises and fuses into one kernel."""
        erf = self.node("Erf", [self.node("Div", [x, self.scalar(math.sqrt(2.0))])])
        return self.node("Mul", [self.node("Mul", [x, self.node("Add", [erf, self.scalar(1.0)])]), self.scalar(0.5)])

    def attention(self, query: str, keys: str, key: str, heads: int, causal_mask: str | None = None) -> str:
        head_dim = self.d // heads
        split = self.ints(0, 0, heads, head_dim)
        q = self.node("Mul", [self.linear(query, key + ".q_proj"), self.scalar(head_dim ** -0.5)])
        q = self.node("Transpose", [self.node("Reshape", [q, split])], perm=[0, 2, 1, 3])
        k = self.node("Transpose", [self.node("Reshape", [self.linear(keys, key + ".k_proj"), split])],
                      perm=[0, 2, 3, 1])
        v = self.node("Transpose", [self.node("Reshape", [self.linear(keys, key + ".v_proj"), split])],
                      perm=[0, 2, 1, 3])
        scores = self.node("MatMul", [q, k])
        if causal_mask is not None:
            scores = self.node("Add", [scores, causal_mask])
        context = self.node("MatMul", [self.node("Softmax", [scores], axis=-1), v])
        context = self.node("Reshape", [self.node("Transpose", [context], perm=[0, 2, 1, 3]), self.ints(0, 0, self.d)])
        return self.linear(context, key + ".out_proj")

    def positions(self, x: str, key: str) -> str:
        """BART's learned positions (offset 2) for the sequence length of ``x`` [B, T, d]."""
        length = self.node("Shape", [x], start=1, end=2)
        table = self.c(self.w(key), "positions")
        return self.node("Slice", [table, self.ints(2), self.node("Add", [length, self.ints(2)]), self.ints(0)])

    def model(self, inputs: list[Any], outputs: list[Any], name: str) -> onnx.ModelProto:
        import onnx
        from onnx import helper

        for node in self.g.nodes:  # nodes made with their own output names are named after it too
            node.name = node.name or f"{node.op_type.lower()}_{node.output[0]}"
        graph = helper.make_graph(self.g.nodes, name, inputs, outputs, self.g.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        if any(node.domain == "com.microsoft" for node in self.g.nodes):  # ONNX Runtime's own operators
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="jamcaps-desktop")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def build_encoder(weights: dict[str, np.ndarray], cfg: dict[str, Any], half: bool = False) -> onnx.ModelProto:
    """``log_mel`` [B, 128, frames] → ``encoder_hidden`` [B, 32, d] (float16 inside with ``half``)."""
    from onnx import TensorProto, helper

    b = Builder(weights, cfg, half)
    x = b.inside("log_mel")
    x = b.gelu(b.node("Conv", [x, b.c(b.w("audio_encoder.conv1.weight"), "conv"),
                               b.c(b.w("audio_encoder.conv1.bias"), "bias")], kernel_shape=[3], pads=[1, 1]))
    index = 0
    while f"audio_encoder.conv_stack.{index}.weight" in weights:
        key = f"audio_encoder.conv_stack.{index}"
        x = b.gelu(b.node("Conv", [x, b.c(b.w(key + ".weight"), "conv"), b.c(b.w(key + ".bias"), "bias")],
                          kernel_shape=[3], pads=[1, 1], strides=[2]))
        index += 1
    x = b.node("Transpose", [x], perm=[0, 2, 1])                                   # [B, 32, d]
    x = b.node("Add", [x, b.c(b.w("audio_encoder.positional_embedding"), "sinusoids")])
    x = b.node("Add", [x, b.positions(x, PREFIX + "encoder.embed_positions.weight")])
    x = b.layer_norm(x, PREFIX + "encoder.layernorm_embedding")
    heads = int(cfg["encoder_attention_heads"])
    for layer in range(int(cfg["encoder_layers"])):
        key = f"{PREFIX}encoder.layers.{layer}"
        x = b.layer_norm(b.node("Add", [x, b.attention(x, x, key + ".self_attn", heads)]),
                         key + ".self_attn_layer_norm")
        inner = b.linear(b.gelu(b.linear(x, key + ".fc1")), key + ".fc2")
        x = b.layer_norm(b.node("Add", [x, inner]), key + ".final_layer_norm")
    b.output(x, "encoder_hidden")
    return b.model([helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["batch", 128, "frames"])],
                   [helper.make_tensor_value_info("encoder_hidden", TensorProto.FLOAT, ["batch", "positions", b.d])],
                   "lpmc-encoder")


def build_decoder(weights: dict[str, np.ndarray], cfg: dict[str, Any]) -> onnx.ModelProto:
    """``decoder_input_ids`` [B, T] and ``encoder_hidden`` [B, S, d] → ``logits`` [B, T, vocabulary]."""
    from onnx import TensorProto, helper

    b = Builder(weights, cfg)
    table = b.w(PREFIX + "shared.weight")
    x = b.node("Gather", [b.c(table, "embed_tokens"), "decoder_input_ids"], axis=0)          # [B, T, d]
    if cfg.get("scale_embedding"):
        x = b.node("Mul", [x, b.scalar(math.sqrt(b.d))])
    x = b.node("Add", [x, b.positions(x, PREFIX + "decoder.embed_positions.weight")])
    x = b.layer_norm(x, PREFIX + "decoder.layernorm_embedding")
    # causal mask [T, T]: 0 on and below the diagonal, a very negative number above it
    length = b.node("Squeeze", [b.node("Shape", ["decoder_input_ids"], start=1, end=2), b.ints(0)])
    steps = b.node("Range", [b.g.const(np.array(0, dtype=np.int64), "zero"), length,
                             b.g.const(np.array(1, dtype=np.int64), "one")])
    later = b.node("Greater", [b.node("Unsqueeze", [steps, b.ints(0)]), b.node("Unsqueeze", [steps, b.ints(1)])])
    causal = b.node("Mul", [b.node("Cast", [later], to=TensorProto.FLOAT),
                            b.scalar(float(np.finfo(np.float32).min))])
    heads = int(cfg["decoder_attention_heads"])
    for layer in range(int(cfg["decoder_layers"])):
        key = f"{PREFIX}decoder.layers.{layer}"
        x = b.layer_norm(b.node("Add", [x, b.attention(x, x, key + ".self_attn", heads, causal)]),
                         key + ".self_attn_layer_norm")
        x = b.layer_norm(b.node("Add", [x, b.attention(x, "encoder_hidden", key + ".encoder_attn", heads)]),
                         key + ".encoder_attn_layer_norm")
        inner = b.linear(b.gelu(b.linear(x, key + ".fc1")), key + ".fc2")
        x = b.layer_norm(b.node("Add", [x, inner]), key + ".final_layer_norm")
    logits = b.node("MatMul", [x, b.c(table.T, "lm_head")])
    bias = np.asarray(weights.get("bart.final_logits_bias", np.zeros((1, table.shape[0]))), dtype=np.float32)
    b.g.nodes.append(helper.make_node("Add", [logits, b.c(bias.reshape(-1), "final_logits_bias")], ["logits"]))
    return b.model([helper.make_tensor_value_info("decoder_input_ids", TensorProto.INT64, ["batch", "length"]),
                    helper.make_tensor_value_info("encoder_hidden", TensorProto.FLOAT, ["batch", "positions", b.d])],
                   [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "length", table.shape[0]])],
                   "lpmc-decoder")


def _banned_by_ngrams(tokens: list[int], size: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``tokens``."""
    if size <= 0 or len(tokens) + 1 < size:
        return set()
    prefix = tuple(tokens[len(tokens) - size + 1:])
    return {tokens[i + size - 1] for i in range(len(tokens) - size + 1) if tuple(tokens[i:i + size - 1]) == prefix}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities of every row at once (float64)."""
    values = logits.astype(np.float64)
    peak = values.max(axis=-1, keepdims=True)
    return values - peak - np.log(np.exp(values - peak).sum(axis=-1, keepdims=True))


def generation_rules(cfg: dict[str, Any], max_length: int, min_length: int) -> dict[str, Any]:
    """The generation rules of ``process_logits``, from the model's configuration."""
    return {"max_length": max_length, "min_length": min_length, "eos": int(cfg.get("eos_token_id", 2)),
            "forced_bos": cfg.get("forced_bos_token_id"), "forced_eos": cfg.get("forced_eos_token_id"),
            "no_repeat": int(cfg.get("no_repeat_ngram_size", 0) or 0)}


def process_logits(scores: np.ndarray, sequence: list[int], *, max_length: int, min_length: int, eos: int,
                   forced_bos: int | None, forced_eos: int | None, no_repeat: int) -> np.ndarray:
    """The generation rules applied, in place, to one row of ``log_softmax`` (as the original's generate
    does)."""
    length = len(sequence)
    if length < min_length:
        scores[eos] = -np.inf
    for token in _banned_by_ngrams(sequence, no_repeat):
        scores[token] = -np.inf
    if forced_bos is not None and length == 1:
        scores[:] = -np.inf
        scores[forced_bos] = 0.0
    if forced_eos is not None and length == max_length - 1:
        scores[:] = -np.inf
        scores[forced_eos] = 0.0
    return scores


def greedy(decoder: Any, encoder_hidden: np.ndarray, cfg: dict[str, Any], *, max_length: int = 128,
           min_length: int = 2) -> list[list[int]]:
    """Greedy decoding of every chunk of the batch (the decoder is an ONNX Runtime session)."""
    start = int(cfg.get("decoder_start_token_id", 2))
    rules = generation_rules(cfg, max_length, min_length)
    eos = rules["eos"]
    sequences = [[start] for _ in range(encoder_hidden.shape[0])]
    finished = [False] * len(sequences)
    pad = int(cfg.get("pad_token_id", 1))
    while len(sequences[0]) < max_length and not all(finished):
        ids = np.array(sequences, dtype=np.int64)
        logits = decoder.run(["logits"], {"decoder_input_ids": ids, "encoder_hidden": encoder_hidden})[0][:, -1]
        logprobs = log_softmax(logits)
        for row, sequence in enumerate(sequences):
            if finished[row]:
                sequence.append(pad)
                continue
            scores = process_logits(logprobs[row], sequence, **rules)
            token = int(np.argmax(scores))
            sequence.append(token)
            finished[row] = token == eos
    return sequences


def beam_search(decoder: Any, encoder_hidden: np.ndarray, cfg: dict[str, Any], *, num_beams: int = 5,
                max_length: int = 128, min_length: int = 2) -> tuple[list[list[int]], list[float]]:
    """Beam search as the original's ``generate`` runs it (early stopping, length penalty 1, the same
    rules as ``greedy``): the best sequence of each chunk, ending with ``</s>``, and its score."""
    start = int(cfg.get("decoder_start_token_id", 2))
    rules = generation_rules(cfg, max_length, min_length)
    eos, pad = rules["eos"], int(cfg.get("pad_token_id", 1))
    batch = encoder_hidden.shape[0]
    hidden = np.repeat(encoder_hidden, num_beams, axis=0)
    beams = [[start] for _ in range(batch * num_beams)]
    scores = np.zeros((batch, num_beams))
    scores[:, 1:] = -1e9  # the first step grows from one beam only
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    while len(beams[0]) < max_length and not all(done):
        logits = decoder.run(["logits"], {"decoder_input_ids": np.array(beams, dtype=np.int64),
                                          "encoder_hidden": hidden})[0][:, -1]
        vocabulary = logits.shape[-1]
        logprobs = log_softmax(logits)
        next_beams, next_scores = [], np.zeros((batch, num_beams))
        for b in range(batch):
            if done[b]:
                next_beams += [beams[b * num_beams] + [pad] for _ in range(num_beams)]
                continue
            step = np.stack([process_logits(logprobs[b * num_beams + i], beams[b * num_beams + i], **rules)
                             + scores[b, i] for i in range(num_beams)]).reshape(-1)
            order = _top(step, 2 * num_beams)
            chosen: list[tuple[float, list[int]]] = []
            for rank, flat in enumerate(order):
                beam, token = divmod(int(flat), vocabulary)
                score = float(step[flat])
                sequence = beams[b * num_beams + beam]
                if token == eos:
                    if rank >= num_beams:
                        continue
                    add_hypothesis(finished[b], num_beams, score / len(sequence), sequence)
                else:
                    chosen.append((score, [*sequence, token]))
                if len(chosen) == num_beams:
                    break
            for i, (score, sequence) in enumerate(chosen):
                next_scores[b, i] = score
                next_beams.append(sequence)
            if len(finished[b]) >= num_beams:  # early stopping: enough finished hypotheses
                done[b] = True
        beams, scores = next_beams, next_scores
    return best_hypotheses(beams, scores, finished, done, max_length, eos)


def best_hypotheses(beams: list[list[int]], scores: np.ndarray, finished: list[list[tuple[float, list[int]]]],
                    done: list[bool], max_length: int, eos: int) -> tuple[list[list[int]], list[float]]:
    """The end of a beam search: each chunk's best finished sequence (a chunk that never stopped early
    counts its live beams too), ending with ``eos``, and its score."""
    chunks, num_beams = scores.shape
    results, best_scores = [], []
    for chunk in range(chunks):
        if not done[chunk]:
            for i in range(num_beams):
                sequence = beams[chunk * num_beams + i]
                add_hypothesis(finished[chunk], num_beams, float(scores[chunk, i]) / (len(sequence) - 1), sequence)
        score, best = max(finished[chunk], key=lambda item: item[0])
        results.append([*best, eos] if len(best) < max_length else best)
        best_scores.append(score)
    return results, best_scores


def _top(values: np.ndarray, count: int) -> np.ndarray:
    """The indices of the ``count`` largest values, largest first, ties in index order (what a stable
    sort of the whole array gives), without sorting the whole array."""
    part = np.argpartition(-values, count - 1)[:count]
    threshold = values[part].min()
    above = np.flatnonzero(values > threshold)
    tied = np.flatnonzero(values == threshold)[: count - len(above)]
    chosen = np.concatenate([above, tied])
    return chosen[np.lexsort((chosen, -values[chosen]))]


def add_hypothesis(hypotheses: list[tuple[float, list[int]]], keep: int, score: float, sequence: list[int]) -> None:
    """Keep the ``keep`` best finished hypotheses."""
    if len(hypotheses) < keep or score > min(h[0] for h in hypotheses):
        hypotheses.append((score, list(sequence)))
        if len(hypotheses) > keep:
            hypotheses.remove(min(hypotheses, key=lambda h: h[0]))
