"""BEATs (Microsoft's audio pre-training with acoustic tokenizers, MIT licence) as an ONNX graph built
from an official checkpoint's weights, with numpy and ``onnx.helper`` alone (no torch).

The network, as the official code computes it in evaluation:

1. the normalised 128-bin Kaldi fbank (``audio.features.beats_fbank``), [B, T, 128], goes through a
   bias-free 16×16 convolution with stride 16; leftover frames are dropped and the tokens are
   flattened time-major (token = t·8 + f), then LayerNorm and a projection to the encoder's width;
2. padded tokens are zeroed; a grouped convolution over time (weight-normalised: g·v/‖v‖ per kernel
   tap, its last step dropped when the kernel is even, exact GELU) is added; then LayerNorm;
3. each layer is post-LayerNorm with deep-norm scaling (x·α + f(x), α = (2·layers)^¼): self-attention
   with a relative-position bias (a bucketed table shared by all layers, computed in layer 0) that
   each layer gates per query (``grep_linear`` on the unscaled query, ``grep_a``), padded keys
   excluded; then a GELU feed-forward block;
4. a fine-tuned checkpoint's ``predictor`` gives per-token logits, averaged over the unpadded tokens,
   then a sigmoid: the 527 AudioSet probabilities.

Padding: a frame mask (True = padded) comes in with the fbank; it is reduced to tokens the way the
official code does it, by reshaping (``m[:, :T − T % N].view(B, N, −1).all(−1)``), which does not
follow patch boundaries. Outputs: ``probs`` (fine-tuned only), ``embedding`` (the mean of the last
layer over the unpadded tokens), ``tokens`` and ``token_mask``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from jamcaps_desktop.models.onnx_graph import GraphBuilder

if TYPE_CHECKING:
    import onnx

OPSET = 18
LAYER_NORM_EPS = 1e-5   # torch.nn.LayerNorm's default, which BEATs uses throughout
MAX_TOKENS = 30000      # relative positions are looked up in a table this long (about 10 min at once)
FRAME_SAMPLES, FRAME_HOP = 400, 160  # 25 ms / 10 ms at 16 kHz

# BEATsConfig's defaults, for checkpoints whose cfg lacks a key
CONFIG_DEFAULTS: dict[str, Any] = {
    "input_patch_size": -1, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12,
    "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "layer_norm_first": False, "deep_norm": False, "conv_pos": 128,
    "conv_pos_groups": 16, "relative_position_embedding": False, "num_buckets": 320, "max_distance": 1280,
    "gru_rel_pos": False, "finetuned_model": False, "predictor_class": 527,
}


def relative_buckets(offsets: np.ndarray, num_buckets: int, max_distance: int) -> np.ndarray:
    """The bucket of each key − query offset, computed as the official code does (in float32)."""
    half = num_buckets // 2
    buckets = (offsets > 0).astype(np.int64) * half
    distance = np.abs(offsets)
    max_exact = half // 2
    safe = np.maximum(distance, 1).astype(np.float32)
    large = max_exact + (np.log(safe / np.float32(max_exact)) / np.float32(math.log(max_distance / max_exact))
                         * np.float32(half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return buckets + np.where(distance < max_exact, distance, large)


def frame_padding_mask(sample_mask: np.ndarray, frames: int) -> np.ndarray:
    """A per-sample padding mask (True = padded) reduced to ``frames`` frames the official way."""
    sample_mask = np.asarray(sample_mask, dtype=bool)
    length = sample_mask.shape[1]
    kept = sample_mask[:, : length - length % frames]
    return kept.reshape(sample_mask.shape[0], frames, -1).all(axis=-1)


def frame_count(samples: int) -> int:
    return 0 if samples < FRAME_SAMPLES else 1 + (samples - FRAME_SAMPLES) // FRAME_HOP


def config_of(cfg: dict[str, Any]) -> dict[str, Any]:
    merged = {**CONFIG_DEFAULTS, **cfg}
    if merged["activation_fn"] != "gelu":
        raise ValueError(f"activation {merged['activation_fn']!r} is not the GELU this graph uses")
    if merged["layer_norm_first"]:
        raise ValueError("pre-LayerNorm BEATs variants (layer_norm_first) are not supported")
    if merged["input_patch_size"] != 16:
        raise ValueError(f"patch size {merged['input_patch_size']} is not the 16 of the published checkpoints")
    return merged


def random_weights(cfg: dict[str, Any], rng: np.random.Generator, scale: float = 0.2) -> dict[str, np.ndarray]:
    """Random weights in the official checkpoint's names and shapes (for tests and speed measurements):
    N(0, scale), LayerNorm gains around 1."""
    cfg = config_of(cfg)
    d, e = int(cfg["encoder_embed_dim"]), int(cfg["embed_dim"])
    f, h = int(cfg["encoder_ffn_embed_dim"]), int(cfg["encoder_attention_heads"])
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (e, 1, 16, 16), "layer_norm.weight": (e,), "layer_norm.bias": (e,),
        "post_extract_proj.weight": (d, e), "post_extract_proj.bias": (d,),
        "encoder.pos_conv.0.weight_v": (d, d // int(cfg["conv_pos_groups"]), int(cfg["conv_pos"])),
        "encoder.pos_conv.0.weight_g": (1, 1, int(cfg["conv_pos"])), "encoder.pos_conv.0.bias": (d,),
        "encoder.layer_norm.weight": (d,), "encoder.layer_norm.bias": (d,)}
    if cfg["finetuned_model"]:
        classes = int(cfg["predictor_class"])
        shapes["predictor.weight"], shapes["predictor.bias"] = (classes, d), (classes,)
    for i in range(int(cfg["encoder_layers"])):
        k = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[k + f"self_attn.{proj}.weight"], shapes[k + f"self_attn.{proj}.bias"] = (d, d), (d,)
        shapes[k + "self_attn.grep_linear.weight"], shapes[k + "self_attn.grep_linear.bias"] = (8, d // h), (8,)
        shapes[k + "self_attn.grep_a"] = (1, h, 1, 1)
        shapes[k + "self_attn.relative_attention_bias.weight"] = (int(cfg["num_buckets"]), h)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[k + f"{norm}.weight"], shapes[k + f"{norm}.bias"] = (d,), (d,)
        shapes[k + "fc1.weight"], shapes[k + "fc1.bias"] = (f, d), (f,)
        shapes[k + "fc2.weight"], shapes[k + "fc2.bias"] = (d, f), (d,)
    weights = {key: (rng.standard_normal(shape) * scale).astype(np.float32) for key, shape in shapes.items()}
    for key in weights:
        if key.endswith("norm.weight"):
            weights[key] += np.float32(1.0)
    return weights


def build_onnx(weights: dict[str, np.ndarray], cfg: dict[str, Any], name: str = "beats",
               half: bool = False, positional_blocks: bool | None = None) -> onnx.ModelProto:
    """The ONNX model of a BEATs checkpoint (``weights``: its ``model`` state dict as numpy arrays,
    ``cfg``: its ``cfg``). ``half`` stores weights and computes in float16 (inputs and outputs stay
    float32). ``positional_blocks`` (default: with ``half``, the graph made for a GPU) computes the
    positional convolution as matrix products over blocks of tokens (``_positional_blocks``) instead of
    a grouped convolution. KeyError names a missing tensor; ValueError an architecture this graph does
    not build."""
    import onnx
    from onnx import TensorProto, helper

    cfg = config_of(cfg)
    dim = int(cfg["encoder_embed_dim"])
    heads = int(cfg["encoder_attention_heads"])
    layers = int(cfg["encoder_layers"])
    embed = int(cfg["embed_dim"])
    if dim % heads:
        raise ValueError(f"width {dim} is not a multiple of {heads} heads")
    head_dim = dim // heads
    finetuned = bool(cfg["finetuned_model"]) and "predictor.weight" in weights
    dtype = np.float16 if half else np.float32
    onnx_dtype = TensorProto.FLOAT16 if half else TensorProto.FLOAT

    builder = GraphBuilder()
    const, node = builder.const, builder.node

    def w(key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        array = np.asarray(weights[key], dtype=np.float32)
        if shape is not None and array.shape != shape:
            raise ValueError(f"{key} has shape {array.shape}, expected {shape}")
        return array

    def c(array: np.ndarray, label: str) -> str:
        return const(np.asarray(array, dtype=np.float32).astype(dtype), label)

    def ints(*values: int) -> str:
        return const(np.array(values, dtype=np.int64), "ints")

    def scalar(value: float) -> str:
        return c(np.array(value), "scalar")

    def linear(x: str, key: str, size_in: int, size_out: int) -> str:
        kernel = w(key + ".weight", (size_out, size_in)).T
        out = node("MatMul", [x, c(kernel, "kernel")])
        return node("Add", [out, c(w(key + ".bias", (size_out,)), "bias")]) if key + ".bias" in weights else out

    def layer_norm(x: str, key: str, size: int) -> str:
        return node("LayerNormalization", [x, c(w(key + ".weight", (size,)), "gamma"),
                                           c(w(key + ".bias", (size,)), "beta")], axis=-1, epsilon=LAYER_NORM_EPS)

    def gelu(x: str) -> str:
        """Exact (erf) GELU, as the official modules compute it, in the order of operations ONNX Runtime
        recognises and fuses into one kernel (with the preceding bias, on a GPU)."""
        erf = node("Erf", [node("Div", [x, scalar(math.sqrt(2.0))])])
        return node("Mul", [node("Mul", [x, node("Add", [erf, scalar(1.0)])]), scalar(0.5)])

    # 1. patches: [B, T, 128] -> [B, 1, T, 128] -> conv -> [B, E, T/16, 8] -> [B, N, E], time-major
    fbank = node("Cast", ["fbank"], to=onnx_dtype)
    x = node("Unsqueeze", [fbank, ints(1)])
    conv_inputs = [x, c(w("patch_embedding.weight", (embed, 1, 16, 16)), "patch_kernel")]
    if "patch_embedding.bias" in weights:
        conv_inputs.append(c(w("patch_embedding.bias", (embed,)), "patch_bias"))
    x = node("Conv", conv_inputs, kernel_shape=[16, 16], strides=[16, 16])
    x = node("Transpose", [node("Reshape", [x, ints(0, embed, -1)])], perm=[0, 2, 1])
    x = layer_norm(x, "layer_norm", embed)
    if "post_extract_proj.weight" in weights:
        x = linear(x, "post_extract_proj", embed, dim)
    elif embed != dim:
        raise KeyError("post_extract_proj.weight")

    # 2. token mask, by reshaping the frame mask as the official code does
    tokens = node("Shape", [x], start=1, end=2)                                       # [1]
    frames = node("Shape", ["padding_mask"], start=1, end=2)
    kept = node("Sub", [frames, node("Mod", [frames, tokens])])
    mask = node("Slice", ["padding_mask", ints(0), kept, ints(1)])
    mask = node("Reshape", [node("Cast", [mask], to=TensorProto.FLOAT), node("Concat", [ints(0), tokens, ints(-1)],
                                                                               axis=0)])
    token_padded = node("ReduceMin", [mask, ints(-1)], keepdims=0)                     # [B, N] 1 = padded
    keep = node("Cast", [node("Sub", [const(np.array(1.0, dtype=np.float32), "one"), token_padded])],
                to=onnx_dtype)                                                        # [B, N] 1 = real
    x = node("Mul", [x, node("Unsqueeze", [keep, ints(2)])])

    # pos_conv: weight norm over dims 0 and 1 for each kernel tap
    groups = int(cfg["conv_pos_groups"])
    width = int(cfg["conv_pos"])
    v = w("encoder.pos_conv.0.weight_v", (dim, dim // groups, width))
    g = w("encoder.pos_conv.0.weight_g")
    effective = g.reshape(1, 1, width) * v / np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True)
                                                       ).astype(np.float32)
    pos_bias = c(w("encoder.pos_conv.0.bias", (dim,)), "pos_bias")
    use_blocks = half if positional_blocks is None else positional_blocks
    if use_blocks:
        band = c(positional_band(effective, groups, POSITIONAL_BLOCK), "pos_band")
        positional = node("Add", [_positional_blocks(builder, x, band, dim, groups, width), pos_bias])
    else:
        conv = node("Conv", [node("Transpose", [x], perm=[0, 2, 1]), c(effective, "pos_kernel"), pos_bias],
                    kernel_shape=[width], pads=[width // 2, width // 2], group=groups)
        if width % 2 == 0:
            conv = node("Slice", [conv, ints(0), ints(-1), ints(2)])
        positional = node("Transpose", [conv], perm=[0, 2, 1])
    x = node("Add", [x, gelu(positional)])
    x = layer_norm(x, "encoder.layer_norm", dim)

    # 3. relative-position bias [H, N, N] from a per-offset table, shared by every layer
    position_bias = None
    if cfg["relative_position_embedding"]:
        table_keys = sorted((k for k in weights if k.endswith("self_attn.relative_attention_bias.weight")),
                            key=lambda k: int(k.split(".")[2]))
        if not table_keys:
            raise KeyError("encoder.layers.0.self_attn.relative_attention_bias.weight")
        table = w(table_keys[-1], (int(cfg["num_buckets"]), heads))  # the official loader's last copy wins
        offsets = np.arange(-MAX_TOKENS, MAX_TOKENS + 1)
        per_offset = table[relative_buckets(offsets, int(cfg["num_buckets"]), int(cfg["max_distance"]))]
        positions = node("Range", [const(np.array(0, dtype=np.int64), "zero"),
                                   node("Squeeze", [tokens, ints(0)]), const(np.array(1, dtype=np.int64), "step")])
        offset_index = node("Add", [node("Sub", [node("Unsqueeze", [positions, ints(0)]),
                                                 node("Unsqueeze", [positions, ints(1)])]),
                                    const(np.array(MAX_TOKENS, dtype=np.int64), "centre")])   # [N(q), N(k)]
        bias = node("Gather", [c(per_offset, "relative_bias"), offset_index], axis=0)        # [N, N, H]
        position_bias = node("Transpose", [bias], perm=[2, 0, 1])                           # [H, N, N]

    blocked = node("Mul", [node("Unsqueeze", [token_padded, ints(1, 2)]),
                           const(np.array(-1e4 if half else np.finfo(np.float32).min / 2, dtype=np.float32),
                                 "blocked")])
    blocked = node("Cast", [blocked], to=onnx_dtype)                                   # [B, 1, 1, N]
    # the padded keys are excluded inside the scores' matrix product: each query gets the extra components
    # [1, 0 × 7] and each key [blocked, 0 × 7] (eight, so that the product keeps its tensor-core alignment),
    # which saves a pass over the [B, H, N, N] scores in every layer
    batch = node("Shape", [x], start=0, end=1)
    unit = np.zeros((1, 1, 1, 8), dtype=dtype)
    unit[..., 0] = 1
    query_extra = node("Expand", [const(unit, "unit"), node("Concat", [batch, ints(heads), tokens, ints(8)], axis=0)])
    key_extra = node("Concat", [blocked, node("Expand", [const(np.zeros((1, 1, 7, 1), dtype=dtype), "zeros"),
                                                         node("Concat", [batch, ints(1, 7), tokens], axis=0)])], axis=2)
    key_extra = node("Expand", [key_extra, node("Concat", [batch, ints(heads, 8), tokens], axis=0)])  # [B, H, 8, N]
    alpha = math.pow(2 * layers, 0.25) if cfg["deep_norm"] else 1.0
    split = ints(0, 0, heads, head_dim)
    merged = ints(0, 0, dim)
    ffn = int(cfg["encoder_ffn_embed_dim"])
    for index in range(layers):
        key = f"encoder.layers.{index}."
        q = linear(x, key + "self_attn.q_proj", dim, dim)
        k = linear(x, key + "self_attn.k_proj", dim, dim)
        value = linear(x, key + "self_attn.v_proj", dim, dim)
        q = node("Transpose", [node("Reshape", [q, split])], perm=[0, 2, 1, 3])        # [B, H, N, d] unscaled
        k = node("Transpose", [node("Reshape", [k, split])], perm=[0, 2, 3, 1])        # [B, H, d, N]
        value = node("Transpose", [node("Reshape", [value, split])], perm=[0, 2, 1, 3])
        scores = node("MatMul", [node("Concat", [node("Mul", [q, scalar(head_dim ** -0.5)]), query_extra], axis=3),
                                 node("Concat", [k, key_extra], axis=2)])            # [B, H, N, N], masked
        if position_bias is not None:
            bias = position_bias
            if cfg["gru_rel_pos"]:
                gate = node("Sigmoid", [node("ReduceSum", [
                    node("Reshape", [linear(q, key + "self_attn.grep_linear", head_dim, 8), ints(0, 0, 0, 2, 4)]),
                    ints(-1)], keepdims=0)])                                           # [B, H, N, 2]
                gate_a = node("Slice", [gate, ints(0), ints(1), ints(3)])
                gate_b = node("Slice", [gate, ints(1), ints(2), ints(3)])
                grep_a = c(w(key + "self_attn.grep_a", (1, heads, 1, 1)), "grep_a")
                factor = node("Add", [node("Mul", [gate_a, node("Sub", [node("Mul", [gate_b, grep_a]),
                                                                       scalar(1.0)])]), scalar(2.0)])
                bias = node("Mul", [factor, position_bias])                            # [B, H, N, N]
            scores = node("Add", [scores, bias])
        context = node("MatMul", [node("Softmax", [scores], axis=-1), value])
        context = node("Reshape", [node("Transpose", [context], perm=[0, 2, 1, 3]), merged])
        attended = linear(context, key + "self_attn.out_proj", dim, dim)
        x = layer_norm(node("Add", [node("Mul", [x, scalar(alpha)]), attended]), key + "self_attn_layer_norm", dim)
        inner = gelu(linear(x, key + "fc1", dim, ffn))
        x = layer_norm(node("Add", [node("Mul", [x, scalar(alpha)]), linear(inner, key + "fc2", ffn, dim)]),
                       key + "final_layer_norm", dim)

    # 4. outputs: the mean over unpadded tokens, and the fine-tuned head's probabilities
    weight = node("Unsqueeze", [keep, ints(2)])                                        # [B, N, 1]
    count = node("Max", [node("ReduceSum", [weight, ints(1)], keepdims=0), scalar(1.0)])  # [B, 1]
    features = node("Cast", [x], to=TensorProto.FLOAT)
    builder.nodes.append(helper.make_node("Identity", [features], ["tokens"]))
    builder.nodes.append(helper.make_node("Cast", [token_padded], ["token_mask"], to=TensorProto.BOOL))
    pooled = node("Div", [node("ReduceSum", [node("Mul", [x, weight]), ints(1)], keepdims=0), count])
    builder.nodes.append(helper.make_node("Cast", [pooled], ["embedding"], to=TensorProto.FLOAT))
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]),
               helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "tokens", dim]),
               helper.make_tensor_value_info("token_mask", TensorProto.BOOL, ["batch", "tokens"])]
    if finetuned:
        classes = int(cfg["predictor_class"])
        logits = node("Mul", [linear(x, "predictor", dim, classes), weight])          # padded tokens count 0
        mean = node("Div", [node("ReduceSum", [logits, ints(1)], keepdims=0), count])
        builder.nodes.append(helper.make_node("Cast", [node("Sigmoid", [mean])], ["probs"], to=TensorProto.FLOAT))
        outputs.insert(0, helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]))

    graph = helper.make_graph(
        builder.nodes, name,
        [helper.make_tensor_value_info("fbank", TensorProto.FLOAT, ["batch", "frames", 128]),
         helper.make_tensor_value_info("padding_mask", TensorProto.BOOL, ["batch", "frames"])],
        outputs, builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="jamcaps-desktop")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


POSITIONAL_BLOCK = 8  # tokens per block in ``_positional_blocks``


def _reach(width: int, block: int) -> int:
    """How many blocks of ``block`` tokens an output block reads through a kernel of ``width`` taps."""
    return -(-(width - 1) // block) + 1


def positional_band(kernel: np.ndarray, groups: int, block: int) -> np.ndarray:
    """[groups, span·per_group, block·per_group] band matrices of a grouped convolution's ``kernel``
    [channels, per_group, width] (float32): band[g, p·per_group + c, l·per_group + o] = kernel[g·per_group + o,
    c, p − l], zero where p − l falls outside the kernel; span = reach·block input tokens."""
    _channels, per_group, width = kernel.shape
    span = _reach(width, block) * block
    taps = kernel.reshape(groups, per_group, per_group, width).transpose(0, 3, 2, 1)  # g, t, c, o
    band = np.zeros((groups, span, per_group, block, per_group), dtype=np.float32)
    for lag in range(block):
        band[:, lag:lag + width, :, lag, :] = taps
    return band.reshape(groups, span * per_group, block * per_group)


def _positional_blocks(builder: GraphBuilder, x: str, band: str, dim: int, groups: int, width: int,
                       block: int = POSITIONAL_BLOCK) -> str:
    """The grouped convolution over time of token-major ``x`` [B, N, dim] given as ``positional_band``'s
    ``band`` matrices (zero padding of width//2 in front; the output is cut to N tokens), without its bias.

    cuDNN runs this convolution (16 groups of 48 channels, 128 taps, in float16) far below a GPU's matrix
    speed: on an H100 it took two thirds of full-size BEATs' time (22 ms for a batch of 64 windows). Here
    the tokens are cut into blocks of ``block``, and each output block is one matrix product, per group, of
    the input blocks it reads (their tokens and channels side by side) with the band matrix (2.3 ms). The
    band matrices hold block·span/width times the kernel's weights, stored in the graph: made in the graph
    instead, ONNX Runtime would fold them at every load, for several seconds. The stacked input blocks hold
    ``reach`` copies of the input (about 0.8 GB of GPU memory for full-size BEATs at 64 windows)."""
    const, node = builder.const, builder.node
    per_group = dim // groups
    reach = _reach(width, block)
    span = reach * block
    ints = lambda *values: const(np.array(values, dtype=np.int64), "ints")  # noqa: E731

    # the input blocks: pad to whole blocks (width//2 in front), group-major
    shape = node("Shape", [x])
    batch, tokens = node("Slice", [shape, ints(0), ints(1)]), node("Slice", [shape, ints(1), ints(2)])
    blocks = node("Div", [node("Add", [tokens, ints(block - 1)]), ints(block)])      # output blocks
    total = node("Mul", [node("Add", [blocks, ints(reach - 1)]), ints(block)])
    right = node("Sub", [node("Sub", [total, tokens]), ints(width // 2)])
    padded = node("Pad", [x, node("Concat", [ints(0, width // 2, 0, 0), right, ints(0)], axis=0)])
    grouped = node("Transpose", [node("Reshape", [padded, node("Concat", [
        batch, ints(-1, block, groups, per_group)], axis=0)])], perm=[3, 0, 1, 2, 4])  # g, B, blocks, l, c
    grouped = node("Reshape", [grouped, ints(0, 0, 0, block * per_group)])
    read = [node("Slice", [grouped, ints(first), node("Add", [blocks, ints(first)]), ints(2)])
            for first in range(reach)]
    stacked = node("Reshape", [node("Concat", read, axis=3), ints(0, -1, span * per_group)])  # g, B·blocks, in

    out = node("MatMul", [stacked, band])                                             # g, B·blocks, out
    out = node("Reshape", [out, node("Concat", [ints(groups), batch, ints(-1, per_group)], axis=0)])
    out = node("Reshape", [node("Transpose", [out], perm=[1, 2, 0, 3]), ints(0, 0, dim)])  # B, tokens', dim
    return node("Slice", [out, ints(0), tokens, ints(1)])
