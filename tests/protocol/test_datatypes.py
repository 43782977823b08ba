"""V2 datatype <-> numpy <-> ONNX maps cover every type, both ways."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from serve.protocol.datatypes import (
    ONNX_ELEM_TO_V2,
    ONNX_TYPE_TO_V2,
    V2_DATATYPES,
    V2_TO_NUMPY,
    V2_TO_TF,
    datatype_from_onnx,
    datatype_of,
    numpy_dtype,
)
from serve.protocol.types import ProtocolError


@pytest.mark.parametrize("datatype", list(V2_TO_NUMPY))
def test_numpy_round_trip(datatype: str) -> None:
    assert datatype_of(numpy_dtype(datatype)) == datatype


def test_numpy_variants() -> None:
    assert datatype_of(np.dtype(">f4")) == "FP32"
    assert datatype_of(np.dtype("U5")) == "BYTES"
    assert datatype_of(np.dtype("S5")) == "BYTES"
    with pytest.raises(ValueError, match="complex64"):
        datatype_of(np.complex64)


def test_onnx_element_types_agree_with_onnx() -> None:
    for elem, datatype in ONNX_ELEM_TO_V2.items():
        name = onnx.TensorProto.DataType.Name(elem).lower()  # as onnxruntime writes it
        assert datatype_from_onnx(elem) == datatype
        assert datatype_from_onnx(f"tensor({name})") == datatype
        if datatype != "BF16":
            np_type = onnx.helper.tensor_dtype_to_np_dtype(elem)
            assert datatype_of(np_type) == datatype
    assert set(ONNX_TYPE_TO_V2.values()) == set(V2_DATATYPES) == set(V2_TO_TF)
    with pytest.raises(ValueError, match="complex64"):
        datatype_from_onnx("tensor(complex64)")
    with pytest.raises(ValueError):
        datatype_from_onnx(onnx.TensorProto.COMPLEX64)


@pytest.mark.parametrize(
    "value,message",
    [
        ("BF16", "BF16 is not supported"),
        ("fp32", "unknown datatype 'fp32'"),
        (None, "unknown datatype None"),
        ([1], "unknown datatype [1]"),
    ],
)
def test_request_datatype_errors(value, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        numpy_dtype(value)
    assert info.value.status == 400 and message in info.value.message
