"""int8 quantization through onnxruntime's quantization tools.

Dynamic quantization (weights int8, activations quantized at run time) suits MatMul/Gemm
models and needs no data. Convolutions quantize far better statically, with activation ranges
calibrated on real samples: when the model has a Conv and calibration data is given, the static
QDQ form is used (per-channel int8 weights, int8 activations).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

CALIBRATION_SAMPLES = 256


class _Samples(CalibrationDataReader):
    def __init__(self, input_name: str, samples: np.ndarray, batch: int = 32) -> None:
        self._batches = iter(
            [{input_name: samples[i : i + batch]} for i in range(0, len(samples), batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def has_conv(model: onnx.ModelProto) -> bool:
    return any(node.op_type == "Conv" for node in model.graph.node)


def quantize_int8(model: bytes, calibration: np.ndarray | None = None) -> tuple[bytes, str]:
    """Quantize serialized `model` to int8; returns (model bytes, method used)."""
    proto = onnx.load_from_string(model)
    static = calibration is not None and len(calibration) > 0 and has_conv(proto)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the tools log advice for every node at WARNING
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, prep, dst = (Path(tmp) / n for n in ("float.onnx", "prep.onnx", "int8.onnx"))
            src.write_bytes(model)
            quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
            if static:
                input_name = proto.graph.input[0].name
                quantize_static(
                    str(prep),
                    str(dst),
                    _Samples(input_name, np.asarray(calibration)[:CALIBRATION_SAMPLES]),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                )
                used = min(len(calibration), CALIBRATION_SAMPLES)
                method = f"static int8 (QDQ, per-channel, {used} calibration samples)"
            else:
                quantize_dynamic(str(prep), str(dst), weight_type=QuantType.QInt8)
                method = "dynamic int8 (weights int8, activations at run time)"
            out = onnx.load(str(dst))
    finally:
        root.setLevel(level)
    out.ir_version = proto.ir_version
    for key, value in ((p.key, p.value) for p in proto.metadata_props):
        if key not in {p.key for p in out.metadata_props}:
            out.metadata_props.add(key=key, value=value)
    out.metadata_props.add(key="quantization", value=method)
    return out.SerializeToString(), method
