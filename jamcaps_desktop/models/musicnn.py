"""The musicnn taggers (Pons & Serra, ISC licence) as ONNX graphs built from their TF1 checkpoints.

The network (shared by the MTT and MSD models), in NCHW with H = 187 frames and W = 96 mel bands:
a one-channel batch norm; a timbral front end (time-padded 7×38 and 7×67 convolutions, max over the
remaining bands) and a temporal one (SAME 128×1, 64×1, 32×1 convolutions, max over all bands), every
convolution followed by ReLU then batch norm; a mid-end of three kernel-7 1-D convolutions with
residual connections; a back end that pools the 753 channels over time (max and mean, interleaved
per channel), then batch norm → dense 200 → ReLU → batch norm (``penultimate``) → dense 50 → sigmoid
(``tags``). Batch norm uses the moving statistics with epsilon 1e-3, as TensorFlow did.
"""

from __future__ import annotations

import numpy as np

from jamcaps_desktop.models.onnx_graph import GraphBuilder

FRAMES = 187
BANDS = 96
EPSILON = 1e-3


def build_onnx(weights: dict[str, np.ndarray], *, name: str = "musicnn"):  # -> onnx.ModelProto
    """An ONNX model: input ``melspec`` [N, 187, 96]; outputs ``tags`` [N, 50], ``penultimate`` [N, 200],
    ``max_pool`` [N, 753] and ``mean_pool`` [N, 753]."""
    import onnx
    from onnx import TensorProto, helper

    graph_builder = GraphBuilder()
    nodes, initializers = graph_builder.nodes, graph_builder.initializers
    const, node = graph_builder.const, graph_builder.node

    def w(key: str) -> np.ndarray:
        return weights[key].astype(np.float32)

    def batch_norm(x: str, index: int) -> str:
        prefix = "batch_normalization" + ("" if index == 0 else f"_{index}")
        return node("BatchNormalization",
                    [x, const(w(prefix + "/gamma"), "gamma"), const(w(prefix + "/beta"), "beta"),
                     const(w(prefix + "/moving_mean"), "mean"), const(w(prefix + "/moving_variance"), "var")],
                    epsilon=EPSILON)

    def conv1d(x: str, index: int) -> str:
        kernel = w(f"conv2d_{index}/kernel")[:, :, 0, :]  # [7, C, 1, 64] → [7, C, 64]
        kernel = np.transpose(kernel, (2, 1, 0))          # → [64, C, 7]
        return node("Conv", [x, const(kernel, "kernel"), const(w(f"conv2d_{index}/bias"), "bias")], pads=[3, 3])

    axes = lambda *values: const(np.array(values, dtype=np.int64), "axes")  # noqa: E731

    x = node("Unsqueeze", ["melspec", axes(1)])           # [N, 1, 187, 96]
    x = batch_norm(x, 0)

    def band_max(x: str, conv_index: int, bn_index: int, pads: list[int]) -> str:
        """BN(ReLU(conv(x) + bias)) maximised over the bands, computed as BN(ReLU(s·max(conv(x; s·kernel)) + bias))
        with s the sign of each channel's batch-norm gain: bias, ReLU and a batch norm's affine map are
        monotone per channel (rising where s = 1, falling where s = -1, where the maximum of the negated
        kernel's outputs gives the minimum), so they commute with the maximum and run on the small pooled
        tensor instead of the convolution's [N, C, 187, bands] output, which a GPU would otherwise read and
        write three more times. The result is the same to float rounding."""
        prefix = "conv2d" + ("" if conv_index == 0 else f"_{conv_index}")
        bn_prefix = f"batch_normalization_{bn_index}"
        sign = np.where(w(bn_prefix + "/gamma") < 0, -1.0, 1.0).astype(np.float32)
        kernel = np.transpose(w(prefix + "/kernel"), (3, 2, 0, 1)) * sign[:, None, None, None]  # HWIO → OIHW
        y = node("Conv", [x, const(kernel.astype(np.float32), "kernel")], pads=pads)
        bands = BANDS - kernel.shape[3] + 1
        pooled = node("MaxPool", [y], kernel_shape=[1, bands])                          # [N, C, 187, 1]
        pooled = node("Squeeze", [pooled, axes(3)])
        restored = node("Add", [node("Mul", [pooled, const(sign[:, None], "sign")]),
                                const(w(prefix + "/bias")[:, None], "bias")])
        return batch_norm(node("Relu", [restored]), bn_index)

    front = []
    # timbral: pad time by 3 on each side, valid convolution, then max over the remaining bands
    for conv_index, bn_index in ((0, 1), (1, 2)):
        front.append(band_max(x, conv_index, bn_index, pads=[3, 0, 3, 0]))      # [N, 204, 187]
    # temporal: SAME convolutions along time (the extra padding row goes at the end), max over all bands
    for conv_index, bn_index, length in ((2, 3, 128), (3, 4, 64), (4, 5, 32)):
        before, after = (length - 1) // 2, length // 2
        front.append(band_max(x, conv_index, bn_index, pads=[before, 0, after, 0]))  # [N, 51, 187]
    front_end = node("Concat", front, axis=1)                                # [N, 561, 187]

    mid1 = batch_norm(node("Relu", [conv1d(front_end, 5)]), 6)
    mid2 = node("Add", [batch_norm(node("Relu", [conv1d(mid1, 6)]), 7), mid1])
    mid3 = node("Add", [batch_norm(node("Relu", [conv1d(mid2, 7)]), 8), mid2])
    features = node("Concat", [front_end, mid1, mid2, mid3], axis=1)         # [N, 753, 187]

    max_pool = node("ReduceMax", [features, axes(2)], keepdims=0)            # [N, 753]
    mean_pool = node("ReduceMean", [features, axes(2)], keepdims=0)
    stacked = node("Concat", [node("Unsqueeze", [max_pool, axes(2)]), node("Unsqueeze", [mean_pool, axes(2)])],
                   axis=2)                                                   # [N, 753, 2]
    flat = node("Reshape", [stacked, const(np.array([0, -1], dtype=np.int64), "shape")])  # interleaved, [N, 1506]
    flat = batch_norm(flat, 9)
    dense = node("Add", [node("MatMul", [flat, const(w("dense/kernel"), "dense")]), const(w("dense/bias"), "b")])
    penultimate = batch_norm(node("Relu", [dense]), 10)
    logits = node("Add", [node("MatMul", [penultimate, const(w("dense_1/kernel"), "dense")]),
                          const(w("dense_1/bias"), "b")])
    tags = node("Sigmoid", [logits])

    outputs = {"tags": (tags, 50), "penultimate": (penultimate, 200), "max_pool": (max_pool, 753),
               "mean_pool": (mean_pool, 753)}
    for out_name, (source, _size) in outputs.items():
        nodes.append(helper.make_node("Identity", [source], [out_name]))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("melspec", TensorProto.FLOAT, ["batch", FRAMES, BANDS])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", size]) for n, (_, size) in outputs.items()],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="jamcaps-desktop")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
