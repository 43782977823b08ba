"""Open Inference Protocol datatypes and their numpy and ONNX counterparts."""

from __future__ import annotations

import numpy as np

from serve.protocol.types import ProtocolError

#: V2 datatype -> numpy dtype (little-endian, as the binary extension sends them).
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

#: Every datatype a server may advertise; BF16 exists in the protocol but not in numpy.
V2_DATATYPES: tuple[str, ...] = (*V2_TO_NUMPY, "BF16")

_NUMPY_TO_V2: dict[np.dtype, str] = {dt: name for name, dt in V2_TO_NUMPY.items()}

#: ONNX TensorProto element type number -> V2 datatype.
ONNX_ELEM_TO_V2: dict[int, str] = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    4: "UINT16",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "BYTES",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    12: "UINT32",
    13: "UINT64",
    16: "BF16",
}

#: onnxruntime type strings ("tensor(float)") -> V2 datatype.
ONNX_TYPE_TO_V2: dict[str, str] = {
    "tensor(float)": "FP32",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(uint16)": "UINT16",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(string)": "BYTES",
    "tensor(bool)": "BOOL",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bfloat16)": "BF16",
}

#: V2 datatype -> TF Serving DataType enum name (for TF Serving metadata).
V2_TO_TF: dict[str, str] = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    "BYTES": "DT_STRING",
    "BF16": "DT_BFLOAT16",
}


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype for a V2 datatype named in a request; 400 for BF16 or an unknown name."""
    try:
        return V2_TO_NUMPY[datatype]
    except (KeyError, TypeError):
        pass
    if datatype == "BF16":
        raise ProtocolError(400, "BF16 is not supported")
    raise ProtocolError(
        400, f"unknown datatype {datatype!r}; expected one of {', '.join(V2_DATATYPES)}"
    )


def datatype_of(np_dtype: np.dtype | type) -> str:
    """The V2 datatype of a numpy dtype; strings and objects are BYTES.

    Raises ValueError for a dtype with no V2 counterpart (complex, datetime, ...).
    """
    dt = np.dtype(np_dtype)
    if dt.kind in "OSU":
        return "BYTES"
    name = _NUMPY_TO_V2.get(dt.newbyteorder("<") if dt.byteorder == ">" else dt)
    if name is None:
        raise ValueError(f"numpy dtype {dt} has no Open Inference Protocol datatype")
    return name


def datatype_from_onnx(onnx_type: str | int) -> str:
    """The V2 datatype of an ONNX element type: "tensor(float)" or a TensorProto number (1).

    Raises ValueError for ONNX types the protocol cannot carry (complex, float8, sequences).
    """
    table: dict = ONNX_ELEM_TO_V2 if isinstance(onnx_type, int) else ONNX_TYPE_TO_V2
    try:
        return table[onnx_type]
    except KeyError:
        raise ValueError(
            f"ONNX type {onnx_type!r} has no Open Inference Protocol datatype"
        ) from None
