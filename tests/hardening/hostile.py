"""Builders of small ONNX models, benign and hostile, for the hardening tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10


def _model(
    graph: onnx.GraphProto, extra_opsets: tuple[tuple[str, int], ...] = ()
) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = IR_VERSION
    return model


def add_weight_model(weight: np.ndarray | None = None) -> onnx.ModelProto:
    """y = x + w with x, y float32 [N, 4] and w an initializer (4 floats)."""
    w = np.arange(4, dtype=np.float32) if weight is None else weight.astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node], "add", [x], [y], initializer=[numpy_helper.from_array(w, "w")]
    )
    return _model(graph)


def point_external(
    model: onnx.ModelProto, location: str, offset: int = 0, length: int | None = None
) -> onnx.ModelProto:
    """Mark initializer `w` as stored in `location` (nothing is written): a hand-made reference."""
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = {"location": location, "offset": str(offset)}
    entries["length"] = str(16 if length is None else length)
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return model


def write_version(root: Path, name: str, version: int, model: onnx.ModelProto) -> Path:
    """Write `model` as `root/name/version/model.onnx` (external data references left as set)."""
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def weights_bytes() -> bytes:
    return np.arange(4, dtype=np.float32).tobytes()


def custom_domain_model(domain: str = "com.example.evil") -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    node = helper.make_node("Pwn", ["x"], ["y"], domain=domain)
    return _model(helper.make_graph([node], "custom", [x], [y]), extra_opsets=((domain, 1),))


def constant_shape_bomb(shape: tuple[int, ...] = (4 * 1024**2, 4096)) -> onnx.ModelProto:
    """ConstantOfShape of a constant giant shape (64 GiB of float32 by default): y = x + sum(c)."""
    s = numpy_helper.from_array(np.array(shape, np.int64), "s")
    return _bomb([], [s], "s")


def computed_shape_bomb(shape: tuple[int, ...] = (4 * 1024**2, 4096)) -> onnx.ModelProto:
    """The same bomb, its shape computed by an Add so no static check can read it."""
    ones = np.ones(len(shape), np.int64)
    a = numpy_helper.from_array(ones, "a")
    b = numpy_helper.from_array(np.array(shape, np.int64) - ones, "b")
    return _bomb([helper.make_node("Add", ["a", "b"], ["s"])], [a, b], "s")


def _bomb(prelude: list, initializers: list, shape_name: str) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    one = numpy_helper.from_array(np.array([1.0], np.float32))
    nodes = [
        *prelude,
        helper.make_node("ConstantOfShape", [shape_name], ["c"], value=one),
        helper.make_node("ReduceSum", ["c"], ["r"], keepdims=0),
        helper.make_node("Add", ["x", "r"], ["y"]),
    ]
    return _model(helper.make_graph(nodes, "bomb", [x], [y], initializer=initializers))


def subgraph_external_model(location: str) -> onnx.ModelProto:
    """An If whose then-branch holds a Constant stored externally at `location`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    out = helper.make_tensor_value_info("k", TensorProto.FLOAT, [4])
    tensor = numpy_helper.from_array(np.zeros(4, np.float32), "k")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    tensor.external_data.add(key="length", value="16")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=tensor)], "b", [], [out]
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    return _model(helper.make_graph([node], "if", [x], [y], initializer=[cond]))
