"""Model inputs and outputs the wire protocols can carry: tensors.

scikit-learn (skl2onnx), LightGBM and CatBoost exporters end classifiers with a ZipMap by default:
the probabilities leave the model as a sequence of maps (one {class: probability} per row),
which neither the Open Inference Protocol nor TF Serving can express. ZipMap only re-labels the
[N, classes] probability tensor it is given, so tapeserve serves that tensor instead, under the
output's own name, with the class labels in the ZipMap's order (the column order) kept in the
model's metadata (`labels.<output>`), as the exporter's `zipmap=False` option would. Any other
input or output that is not a tensor is refused at load with the reason and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

ML_DOMAIN = "ai.onnx.ml"


class UnsupportedSignature(ValueError):
    """An input or output the protocols cannot carry; the message names it and the fix."""


def _kind(value_info: onnx.ValueInfoProto) -> str:
    return value_info.type.WhichOneof("value") or "unknown"


def needs_rewrite(model: onnx.ModelProto) -> bool:
    """True when an output is not a tensor (ZipMap); raises for anything that cannot be served."""
    for tensor in model.graph.input:
        if _kind(tensor) not in ("tensor_type", "unknown"):
            raise UnsupportedSignature(
                f"input {tensor.name!r} is a {_kind(tensor).removesuffix('_type')}, not a "
                "tensor: the V2 and TF Serving protocols carry tensors only; export the model "
                "with tensor inputs"
            )
    return any(_kind(out) not in ("tensor_type", "unknown") for out in model.graph.output)


def tensor_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The model with every ZipMap output replaced by the probability tensor it maps, and the
    metadata to record (`labels.<output>`: the class labels as a JSON list, column order)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    metadata: dict[str, str] = {}
    outputs = list(model.graph.output)
    for index, out in enumerate(outputs):
        if _kind(out) in ("tensor_type", "unknown"):
            continue
        node = producers.get(out.name)
        if node is None or node.op_type != "ZipMap" or node.domain != ML_DOMAIN:
            made_by = f"operator {node.op_type!r}" if node is not None else "the graph"
            raise UnsupportedSignature(
                f"output {out.name!r} is a {_kind(out).removesuffix('_type')} made by {made_by}, "
                "not a tensor: the V2 and TF Serving protocols carry tensors only; export the "
                "model so that it outputs tensors"
            )
        labels = _labels(node)
        probabilities = node.input[0]
        model.graph.node.remove(node)
        _rename(model.graph, probabilities, out.name)
        outputs[index] = helper.make_tensor_value_info(
            out.name, TensorProto.FLOAT, [None, len(labels) if labels else None]
        )
        metadata[f"labels.{out.name}"] = json.dumps(labels)
    del model.graph.output[:]
    model.graph.output.extend(outputs)
    return model, metadata


def _labels(node: onnx.NodeProto) -> list:
    for attr in node.attribute:
        if attr.name == "classlabels_int64s":
            return list(attr.ints)
        if attr.name == "classlabels_strings":
            return [s.decode("utf-8") for s in attr.strings]
    return []


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor `old` to `new` wherever the graph produces or reads it."""
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for value_info in graph.value_info:
        if value_info.name == old:
            value_info.name = new


def rewritten(path: Path) -> tuple[bytes | None, dict[str, str]]:
    """(model bytes to load instead of the file, metadata to add), or (None, {}) when the file
    serves as it is. Raises UnsupportedSignature for what cannot be served."""
    graph_only = onnx.load(str(path), load_external_data=False)
    if not needs_rewrite(graph_only):
        return None, {}
    model = onnx.load(str(path))  # with its weights: ZipMap models are small tree ensembles
    model, metadata = tensor_outputs(model)
    return model.SerializeToString(), metadata
