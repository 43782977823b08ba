"""Graphs no framework makes small, written with onnx's helpers: a detector head whose output
rows depend on the data (NonMaxSuppression), the NonZero/GatherND model of the batching bug,
and a model with more than 2 GB of weights in an external data file."""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.producer_name = "modelzoo"
    return model


# -- detector -------------------------------------------------------------------------------

DETECTOR_SIZES = {"full": (1000, 20), "small": (16, 3)}  # (candidate boxes, classes)
MAX_PER_CLASS, IOU, SCORE = 10, 0.5, 0.3


def detector(size_name: str) -> onnx.ModelProto:
    """boxes [N, B, 4] (y1, x1, y2, x2) and scores [N, C, B] -> NonMaxSuppression ->
    selected_indices [K, 3] (batch, class, box), selected_boxes [K, 4], selected_scores [K].

    K depends on the data; the batch index of each row is in selected_indices[:, 0]."""
    boxes_n, classes = DETECTOR_SIZES[size_name]
    const = [
        numpy_helper.from_array(np.array([MAX_PER_CLASS], np.int64), "max_per_class"),
        numpy_helper.from_array(np.array([IOU], np.float32), "iou"),
        numpy_helper.from_array(np.array([SCORE], np.float32), "score_threshold"),
        numpy_helper.from_array(np.array([0, 2], np.int64), "batch_box_columns"),
    ]
    nodes = [
        helper.make_node(
            "NonMaxSuppression",
            ["boxes", "scores", "max_per_class", "iou", "score_threshold"],
            ["selected_indices"],
        ),
        helper.make_node(
            "Gather", ["selected_indices", "batch_box_columns"], ["batch_box"], axis=1
        ),
        helper.make_node("GatherND", ["boxes", "batch_box"], ["selected_boxes"]),
        helper.make_node("GatherND", ["scores", "selected_indices"], ["selected_scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", boxes_n, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes, boxes_n]),
        ],
        [
            helper.make_tensor_value_info("selected_indices", TensorProto.INT64, ["K", 3]),
            helper.make_tensor_value_info("selected_boxes", TensorProto.FLOAT, ["K", 4]),
            helper.make_tensor_value_info("selected_scores", TensorProto.FLOAT, ["K"]),
        ],
        const,
    )
    return _model(graph)


def detections(size_name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Candidate boxes clustered around a few objects, with scores: what a detector head emits."""
    boxes_n, classes = DETECTOR_SIZES[size_name]
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0.2, 0.8, (batch, 1 + boxes_n // 8, 2))
    pick = rng.integers(0, centers.shape[1], (batch, boxes_n))
    center = np.take_along_axis(centers, pick[..., None], axis=1)
    center = center + rng.normal(0, 0.02, center.shape)
    half = rng.uniform(0.05, 0.15, (batch, boxes_n, 2))
    boxes = np.concatenate([center - half, center + half], axis=-1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, classes, boxes_n)).astype(np.float32)
    return {"boxes": boxes, "scores": scores}


# -- image pooling ---------------------------------------------------------------------------

POOL_SIZES = {"full": 224, "small": 32}


def image_pool(size_name: str) -> onnx.ModelProto:
    """input [N, 3, H, W] FP32 -> GlobalAveragePool -> Flatten -> mean [N, 3]: a model whose
    cost is the image-sized request body, not the compute."""
    side = POOL_SIZES[size_name]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["mean"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "image_pool",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["N", 3])],
    )
    return _model(graph)


def images(size_name: str, batch: int, seed: int = 0) -> np.ndarray:
    side = POOL_SIZES[size_name]
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, 3, side, side), dtype=np.float32)


# -- NonZero / GatherND ---------------------------------------------------------------------


def nonzero(width: int = 8) -> onnx.ModelProto:
    """x [N, width] FP32 -> indices of the elements > 0.5 ([K, 2] int64) and their values [K].

    The model of the batching bug: with N requests of one row batched together, K equals N by
    chance now and then, and a server that splits outputs by rows then answers wrongly."""
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    nodes = [
        helper.make_node("Greater", ["x", "half"], ["mask"]),
        helper.make_node("NonZero", ["mask"], ["positions"]),
        helper.make_node("Transpose", ["positions"], ["indices"], perm=[1, 0]),
        helper.make_node("GatherND", ["x", "indices"], ["values"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["K", 2]),
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["K"]),
        ],
        [half],
    )
    return _model(graph)


def nonzero_rows(batch: int, seed: int = 0, width: int = 8) -> dict[str, np.ndarray]:
    """Mostly below the 0.5 threshold, so a row holds 0-3 selected elements."""
    rng = np.random.default_rng(seed)
    return {"x": rng.uniform(0, 0.62, (batch, width)).astype(np.float32)}


# -- large model with external data ---------------------------------------------------------


@dataclass(frozen=True)
class LargeSize:
    width: int
    layers: int
    classes: int

    @property
    def weight_bytes(self) -> int:
        return 4 * (self.layers * self.width * self.width + self.width * self.classes)


LARGE_SIZES = {
    "full": LargeSize(8192, 8, 1000),  # 2.05 GiB of weights (2.2 GB)
    "medium": LargeSize(2048, 8, 1000),  # 136 MiB: enough for a memory measurement in tests
    "small": LargeSize(256, 2, 10),
}
#: Data offsets aligned to this (a page on every platform onnxruntime runs on) so the file can
#: be memory-mapped tensor by tensor.
ALIGN = 64 * 1024


def large(size_name: str, version_dir: Path, seed: int = 0) -> onnx.ModelProto:
    """x [N, width] -> `layers` x (MatMul width x width, Relu) -> MatMul -> y [N, classes].

    The weights go straight into `version_dir/model.onnx.data` one matrix at a time (never the
    whole 2 GB in memory), each at a 64 KiB-aligned offset, and the returned model references
    them as external data (save it as `version_dir/model.onnx`)."""
    size = LARGE_SIZES[size_name]
    rng = np.random.default_rng(seed)
    data = version_dir / "model.onnx.data"
    version_dir.mkdir(parents=True, exist_ok=True)
    inits, nodes, prev = [], [], "x"
    shapes = [(size.width, size.width)] * size.layers + [(size.width, size.classes)]
    with open(data, "wb") as out:
        for i, shape in enumerate(shapes):
            weights = rng.standard_normal(shape, dtype=np.float32)
            weights *= np.float32(np.sqrt(2.0 / shape[0]))
            offset = out.tell()
            out.write(weights.tobytes())
            out.write(b"\0" * (-out.tell() % ALIGN))
            tensor = TensorProto(name=f"W{i}", data_type=TensorProto.FLOAT, dims=list(shape))
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", data.name),
                ("offset", str(offset)),
                ("length", str(weights.nbytes)),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)
            out_name = "y" if i == len(shapes) - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [out_name]))
            if i < len(shapes) - 1:
                nodes.append(helper.make_node("Relu", [out_name], [f"a{i}"]))
                prev = f"a{i}"
    graph = helper.make_graph(
        nodes,
        "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size.width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size.classes])],
        inits,
    )
    return _model(graph)


def large_rows(size_name: str, batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, LARGE_SIZES[size_name].width), dtype=np.float32)


def large_reference(version_dir: Path, model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """numpy over the memory-mapped data file: the same MatMul/Relu chain in float32."""
    with open(version_dir / "model.onnx.data", "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            h = np.asarray(x, np.float32)
            inits = list(model.graph.initializer)
            for i, tensor in enumerate(inits):
                info = {e.key: int(e.value) for e in tensor.external_data if e.key != "location"}
                w = np.frombuffer(
                    mapped, np.float32, count=info["length"] // 4, offset=info["offset"]
                ).reshape(tuple(tensor.dims))
                h = h @ w
                if i < len(inits) - 1:
                    h = np.maximum(h, 0)
                del w
            return h
        finally:
            mapped.close()
