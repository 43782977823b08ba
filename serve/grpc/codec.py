"""ModelInferRequest / ModelInferResponse as a codec of the inference core.

Inputs arrive as typed `contents` or as `raw_input_contents` (one entry per input, in order;
never both, as Triton refuses a mix), every datatype included: FP16 and BF16 have no typed field
and travel raw; BYTES raw are 4-byte little-endian lengths, each followed by its element.
Answers always carry `raw_output_contents`, one entry per output, as Triton's do (tritonclient
reads nothing else). The decoded request goes through the same validation as REST's, so its
refusals say the same things.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve.core.inference import Output, Request
from serve.grpc.generated import grpc_service_pb2 as pb
from serve.lifecycle.registry import ModelVersion
from serve.protocol.binary import deserialize_bytes, element_count, fmt_shape, tensor_bytes
from serve.protocol.datatypes import datatype_of, numpy_dtype
from serve.protocol.types import InferInput, InferRequest, ProtocolError, RequestedOutput
from serve.protocol.v2 import MAX_RANK
from serve.protocol.validate import validate_request

#: The typed `InferTensorContents` field of each datatype (FP16, BF16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameter_value(parameter: Any) -> Any:
    """The value an InferParameter (or ModelRepositoryParameter) holds; None when unset."""
    which = parameter.WhichOneof("parameter_choice")
    return None if which is None else getattr(parameter, which)


def parameters_dict(parameters: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in parameters.items()}


class GrpcCodec:
    """`inference.GRPCInferenceService/ModelInfer`: protobuf messages in and out."""

    protocol = "grpc"

    def decode(self, mv: ModelVersion, msg: pb.ModelInferRequest) -> Request:
        raw = msg.raw_input_contents
        if raw:
            for tensor in msg.inputs:
                if tensor.HasField("contents"):
                    raise ProtocolError(
                        400,
                        f"contents field must not be specified when using raw_input_contents "
                        f"for '{tensor.name}' for model '{mv.name}'",
                    )
            if len(raw) != len(msg.inputs):
                raise ProtocolError(
                    400,
                    f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; "
                    "send one entry per input, in the order of 'inputs'",
                )
        inputs = [
            _decode_input(tensor, raw[i] if raw else None) for i, tensor in enumerate(msg.inputs)
        ]
        outputs = [_requested(o) for o in msg.outputs] or None
        parameters = parameters_dict(msg.parameters) if msg.parameters else {}
        req = InferRequest(msg.id or None, inputs, outputs, True, parameters)
        validate_request(req, mv.inputs, mv.outputs, mv.max_batch_size)
        return Request({i.name: i.data for i in inputs}, outputs, parameters, req.id)

    def encode(
        self, mv: ModelVersion, request: Request, outputs: list[Output], msg: Any
    ) -> tuple[pb.ModelInferResponse, dict[str, str]]:
        answer = pb.ModelInferResponse(
            model_name=mv.name, model_version=str(mv.version), id=request.id or ""
        )
        raw = answer.raw_output_contents
        for name, data, _ in outputs:
            arr = np.asarray(data)
            datatype = datatype_of(arr.dtype)
            answer.outputs.add(name=name, datatype=datatype, shape=arr.shape)
            blob = tensor_bytes(arr, datatype)
            raw.append(blob if isinstance(blob, bytes) else blob.tobytes())
        return answer, {}


def _requested(output: Any) -> RequestedOutput:
    classes = 0
    if output.parameters:
        params = parameters_dict(output.parameters)
        if "shared_memory_region" in params:
            raise ProtocolError(
                400, f"output '{output.name}': shared memory is not supported by this server"
            )
        classes = params.get("classification", 0) or 0
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise ProtocolError(
                400,
                f"output '{output.name}': 'classification' must be a positive integer "
                "(the top K classes)",
            )
    return RequestedOutput(output.name, False, classes)


def _decode_input(tensor: Any, raw: bytes | None) -> InferInput:
    what = f"input '{tensor.name}'"
    if tensor.parameters and "shared_memory_region" in tensor.parameters:
        raise ProtocolError(400, f"{what}: shared memory is not supported by this server")
    datatype = tensor.datatype
    try:
        dtype = numpy_dtype(datatype)
    except ProtocolError as exc:
        raise ProtocolError(exc.status, f"{what}: {exc.message}") from None
    shape = tuple(tensor.shape)
    if len(shape) > MAX_RANK:
        raise ProtocolError(400, f"{what}: rank {len(shape)} exceeds the limit of {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise ProtocolError(400, f"{what}: 'shape' must hold non-negative integers, got "
                            f"{fmt_shape(shape)}")  # fmt: skip
    count = element_count(shape)
    if raw is not None:
        data = _raw_tensor(raw, datatype, dtype, shape, what)
        return InferInput(tensor.name, datatype, shape, data)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise ProtocolError(
            400, f"{what}: {datatype} has no typed contents field; send it in raw_input_contents"
        )
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ProtocolError(
            400,
            f"{what}: contents.{field} has {len(values)} elements, shape {fmt_shape(shape)} "
            f"needs {count}",
        )
    if datatype == "BYTES":
        data = np.empty(count, dtype=object)
        data[:] = list(values)
    elif field in ("int_contents", "uint_contents") and dtype.itemsize < 4:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(dtype)
        if count and (wide.min() < info.min or wide.max() > info.max):
            raise ProtocolError(
                400, f"{what}: a value of contents.{field} is out of the range of {datatype}"
            )
        data = wide.astype(dtype)
    else:
        data = np.asarray(values, dtype=dtype)
    return InferInput(tensor.name, datatype, shape, data.reshape(shape))


def _raw_tensor(
    raw: bytes, datatype: str, dtype: np.dtype, shape: tuple[int, ...], what: str
) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        flat = deserialize_bytes(raw, what, max_count=count)
        if len(flat) != count:
            raise ProtocolError(
                400,
                f"{what}: raw contents hold {len(flat)} BYTES elements, shape "
                f"{fmt_shape(shape)} needs {count}",
            )
        return flat.reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise ProtocolError(
            400,
            f"{what}: raw contents are {len(raw)} bytes, but shape {fmt_shape(shape)} of "
            f"{count} elements x {dtype.itemsize} bytes needs {expected}",
        )
    arr = np.frombuffer(raw, dtype=dtype, count=count)
    if dtype.kind == "b" and count and np.frombuffer(raw, np.uint8).max() > 1:
        raise ProtocolError(400, f"{what}: BOOL raw contents must be bytes 0 or 1")
    return arr.reshape(shape)


GRPC = GrpcCodec()
