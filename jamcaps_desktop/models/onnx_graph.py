"""A small helper for writing ONNX graphs node by node, shared by the app's model converters."""

from __future__ import annotations

from typing import Any

import numpy as np


class GraphBuilder:
    """Collects nodes and weights; every tensor gets a unique name from a running counter."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []  # onnx.NodeProto
        self.initializers: list[Any] = []  # onnx.TensorProto
        self._count = 0

    def _name(self, label: str) -> str:
        self._count += 1
        return f"{label}_{self._count}"

    def const(self, array: np.ndarray, label: str) -> str:
        """A weight (or any constant) as an initializer; returns its name."""
        from onnx import numpy_helper

        name = self._name(label)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        """One operator with one output; returns the output's name."""
        from onnx import helper

        out = self._name(op.lower())
        # named after its output: unique, as some ONNX Runtime releases need (their graph fusions name
        # the nodes they make after the nodes they replace)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out
