"""Build the bundled example repository: `examples/models/example/1/model.onnx`.

A tiny fixed-weight MLP (x: FP32 [N, 4] -> Gemm 8 -> Relu -> Gemm 3 -> Softmax -> y: FP32 [N, 3])
so that `make serve` has something valid to serve out of the box. Deterministic: running this
again writes the same file.

    .venv/bin/python examples/make_example_model.py [--output examples/models]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 would write 14


def build_model(seed: int = 0) -> onnx.ModelProto:
    """The example MLP with seeded weights and a symbolic batch dimension."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (4, 8)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.5, (8, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 3).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "example_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tapeserve"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_repository(root: Path) -> Path:
    """Write the model and its config.json under `root`; returns the model path."""
    path = root / "example" / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_model(), path)
    config = {"max_batch_size": 64, "max_queue_delay_ms": 0}
    (root / "example" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "models")
    args = parser.parse_args()
    print(write_repository(args.output))


if __name__ == "__main__":
    main()
