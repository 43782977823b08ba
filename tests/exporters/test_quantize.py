"""int8 quantization of the digits CNN: static (calibrated) for convolutions, accuracy reported."""

from __future__ import annotations

from pathlib import Path

import onnx

from engine.datasets import load_digits
from exporters.export import check
from exporters.quantize import quantize_int8
from exporters.verify import verify_quantized

MODEL = Path(__file__).resolve().parents[2] / "examples" / "models" / "digits" / "1" / "model.onnx"


def test_static_int8_keeps_the_digits_accuracy_within_a_point():
    data = load_digits(images=True)
    float_bytes = MODEL.read_bytes()
    int8_bytes, method = quantize_int8(float_bytes, data.x_train)
    assert method.startswith("static int8")
    proto = onnx.load_from_string(int8_bytes)
    check(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["quantization"] == method and "labels" in meta
    assert len(int8_bytes) < len(float_bytes) / 2
    report = verify_quantized(
        float_bytes, int8_bytes, data.x_test[:3], samples=data.x_test, labels=data.y_test
    )
    assert report.ok, report.table()


def test_without_calibration_data_quantization_is_dynamic():
    int8_bytes, method = quantize_int8(MODEL.read_bytes(), None)
    assert method.startswith("dynamic int8")
    check(onnx.load_from_string(int8_bytes))
