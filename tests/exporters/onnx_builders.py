"""Small hand-built ONNX models for testing the graph rewrites without the engine."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from exporters.verify import run_session, session


def model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    """A float32 model; inputs/outputs are (name, shape) with "batch" as dimension 0."""
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a, dtype=np.float32), n) for n, a in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 10
    return m


def run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_session(session(m.SerializeToString()), x.astype(np.float32))[0]


def op_types(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]
