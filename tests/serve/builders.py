"""Small ONNX models built in the tests (onnx.helper, IR 10, opset 17) and repositories of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10

#: V2 datatype -> ONNX element type, for Identity models per datatype.
V2_TO_ONNX = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def identity(datatype: str = "FP32", shape: tuple = ("N", 3)) -> onnx.ModelProto:
    """x -> Identity -> y, of one V2 datatype."""
    elem = V2_TO_ONNX[datatype]
    return _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, list(shape))],
    )


def add_mul(batch_dim: str | int = "N", width: int = 4) -> onnx.ModelProto:
    """Two inputs a, b [N, width] -> sum = a + b, product = a * b (output selection tests)."""
    shape = [batch_dim, width]
    nodes = [
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Mul", ["a", "b"], ["product"]),
    ]
    return _model(
        nodes,
        [_fp32(name, shape) for name in ("a", "b")],
        [_fp32(name, shape) for name in ("sum", "product")],
    )


def _fp32(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp(sizes: tuple[int, ...] = (784, 512, 512, 10), seed: int = 0) -> onnx.ModelProto:
    """Gemm/Relu MLP with seeded weights and a symbolic batch dimension."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    layers = len(sizes) - 1
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        w = rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
        b = rng.normal(0, 0.1, n_out).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == layers - 1
        gemm_out = "y" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out]))
        if not last:
            nodes.append(helper.make_node("Relu", [gemm_out], [f"h{i}"]))
            prev = f"h{i}"
    return _model(nodes, [_fp32("x", ["N", sizes[0]])], [_fp32("y", ["N", sizes[-1]])], inits)


def lookup(size: int = 3) -> onnx.ModelProto:
    """i: INT64 [N] -> y = table[i]: an index out of range fails inside onnxruntime."""
    table = numpy_helper.from_array(np.arange(size, dtype=np.float32), "table")
    return _model(
        [helper.make_node("Gather", ["table", "i"], ["y"])],
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["N"])],
        [_fp32("y", ["N"])],
        [table],
    )


def counter() -> onnx.ModelProto:
    """delta: INT64 scalar -> y = Range(0, 10, delta); zeros (delta 0) fail inside onnxruntime."""
    start = numpy_helper.from_array(np.array(0, np.int64), "start")
    limit = numpy_helper.from_array(np.array(10, np.int64), "limit")
    return _model(
        [helper.make_node("Range", ["start", "limit", "delta"], ["y"])],
        [helper.make_tensor_value_info("delta", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["M"])],
        [start, limit],
    )


def busy(width: int = 256, layers: int = 4) -> onnx.ModelProto:
    """n: INT64 [1] -> y: FP32 [1, 1]; runs `layers` MatMuls over an [n, width] matrix of ones.

    The work grows with the value of `n`, so a test can keep the runner busy for as long as it
    needs with a tiny request (queue-full and deadline tests). Its first dimension is fixed, so
    it is served without batching.
    """
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(
        (rng.normal(0, 1 / np.sqrt(width), (width, width))).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("Concat", ["n", "width"], ["shape"], axis=0),
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["h0"],
            value=numpy_helper.from_array(np.ones(1, np.float32)),
        ),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "w"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"h{layers}"], ["y"], keepdims=1))
    width_const = numpy_helper.from_array(np.array([width], np.int64), "width")
    return _model(
        nodes,
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [_fp32("y", [1, 1])],
        [w, width_const],
    )


def write_model(root: Path, name: str, model: onnx.ModelProto | bytes, version: int = 1,
                config: dict | None = None) -> Path:  # fmt: skip
    """Write `root/name/version/model.onnx` (and config.json when given); returns the model path."""
    path = root / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    if config is not None:
        (root / name / "config.json").write_text(json.dumps(config))
    return path


def masked_sequence(width: int = 4) -> onnx.ModelProto:
    """x: FP32 [N, S, width], mask: INT64 [N, S], scale: FP32 [N, 1] -> y = x * mask * scale
    [N, S, width] (follows the sequence) and pooled = the mean of x over the positions the mask
    keeps [N, width] (follows none): padding x with anything and mask with 0 changes neither."""
    one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
    axis = numpy_helper.from_array(np.array([1], np.int64), "axis")
    last = numpy_helper.from_array(np.array([2], np.int64), "last")
    nodes = [
        helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "last"], ["m3"]),
        helper.make_node("Mul", ["x", "m3"], ["kept"]),
        helper.make_node("Unsqueeze", ["scale", "last"], ["s3"]),
        helper.make_node("Mul", ["kept", "s3"], ["y"]),
        helper.make_node("ReduceSum", ["kept", "axis"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "one"], ["positions"]),
        helper.make_node("Div", ["total", "positions"], ["pooled"]),
    ]
    return _model(
        nodes,
        [
            _fp32("x", ["N", "S", width]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "S"]),
            _fp32("scale", ["N", 1]),
        ],
        [_fp32("y", ["N", "S", width]), _fp32("pooled", ["N", width])],
        [one, axis, last],
    )


def doubled_sequence() -> onnx.ModelProto:
    """x: FP32 [N, S] -> y = [x, x] along the sequence: [N, 2S], a length no request has."""
    return _model(
        [helper.make_node("Concat", ["x", "x"], ["y"], axis=1)],
        [_fp32("x", ["N", "S"])],
        [_fp32("y", ["N", "S2"])],
    )


def unmasked_mean() -> onnx.ModelProto:
    """x: FP32 [N, S] -> y = the mean over the sequence [N]: padding changes it."""
    return _model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)],
        [_fp32("x", ["N", "S"])],
        [_fp32("y", ["N"])],
    )


def two_lengths() -> onnx.ModelProto:
    """a: FP32 [N, S], b: FP32 [N, T] (unnamed) -> ya = a + 1 [N, S], yb = b * 2 [N, T],
    outer = a[:, :, None] * b[:, None, :] [N, S, T]: two axes padded independently."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one1")
    ax2 = numpy_helper.from_array(np.array([2], np.int64), "ax2")
    ax1 = numpy_helper.from_array(np.array([1], np.int64), "ax1")
    nodes = [
        helper.make_node("Add", ["a", "one1"], ["ya"]),
        helper.make_node("Mul", ["b", "two"], ["yb"]),
        helper.make_node("Unsqueeze", ["a", "ax2"], ["a3"]),
        helper.make_node("Unsqueeze", ["b", "ax1"], ["b3"]),
        helper.make_node("Mul", ["a3", "b3"], ["outer"]),
    ]
    return _model(
        nodes,
        [_fp32("a", ["N", "S"]), _fp32("b", ["N", None])],
        [_fp32("ya", ["N", "S"]), _fp32("yb", ["N", None]), _fp32("outer", ["N", "S", None])],
        [two, one, ax2, ax1],
    )


_GATED = """
import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.gate = os.path.join(args["model_repository"], "open")
        if {hold_initialize}:
            self.wait()

    def wait(self):
        while not os.path.exists(self.gate):
            time.sleep(0.005)

    def execute(self, requests):
        self.wait()
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("Y", pb_utils.get_input_tensor_by_name(r, "X").as_numpy())])
            for r in requests]
"""


def write_gated_model(root: Path, name: str, hold: str, config: dict | None = None) -> Path:
    """A Python model (X: FP32 [1] -> Y = X) that waits in `hold` ("initialize": its load, or
    "execute": every request) until the file `root/name/open` exists: a test holds a model
    loading, or its one instance busy, for exactly as long as it needs, however slow the
    machine. Needs --allow-python-models. Returns the gate file (create it to open)."""
    folder = root / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    code = _GATED.replace("{hold_initialize}", str(hold == "initialize"))
    (folder / "1" / "model.py").write_text(code)
    spec = [{"name": "X", "data_type": "TYPE_FP32", "dims": [1]}]
    out = [{"name": "Y", "data_type": "TYPE_FP32", "dims": [1]}]
    full = {"backend": "python", "max_batch_size": 0, "input": spec, "output": out}
    (folder / "config.json").write_text(json.dumps({**full, **(config or {})}))
    return folder / "open"
