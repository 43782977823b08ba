"""Open Inference Protocol (KServe V2) REST bodies, JSON and the binary tensor extension."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve.protocol import jsondata
from serve.protocol.binary import (
    deserialize_bytes,
    element_count,
    fixed_tensor,
    fmt_shape,
    tensor_bytes,
)
from serve.protocol.datatypes import datatype_of, numpy_dtype
from serve.protocol.types import (
    InferInput,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    TensorSpec,
)
from serve.protocol.validate import check_timeout

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_RANK = 32
_MAX_EXTENT = 2**48  # elements; far beyond any body size limit
_UNSUPPORTED_PARAMETERS = {
    "shared_memory_region": "shared memory",
}


def parse_header_length(value: str | int | None, body_size: int) -> int | None:
    """The Inference-Header-Content-Length header as an int within the body, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or not text.isascii():
            raise ProtocolError(
                400, f"{HEADER_LENGTH} must be a non-negative integer, got {value[:40]!r}"
            )
        value = int(text)
    if value < 0:
        raise ProtocolError(400, f"{HEADER_LENGTH} must be a non-negative integer, got {value}")
    if value > body_size:
        raise ProtocolError(
            400, f"{HEADER_LENGTH} is {value}, larger than the {body_size}-byte request body"
        )
    return value


def decode_infer(
    body: bytes | memoryview,
    header_length: int | str | None,
    *,
    raw_input: TensorSpec | None = None,
) -> InferRequest:
    """Decode an infer request body (already decompressed) into an InferRequest.

    `header_length` is the Inference-Header-Content-Length header (None when absent). When it
    is 0 the whole body is the single input tensor of `raw_input`, with batch 1.
    """
    if not isinstance(body, (bytes, memoryview)):
        body = bytes(body)  # a memoryview is kept: tensors are read from it in place
    header_length = parse_header_length(header_length, len(body))
    if header_length == 0:
        return _decode_raw(body, raw_input)
    json_end = len(body) if header_length is None else header_length
    doc = jsondata.loads_infer(body if header_length is None else body[:header_length])
    if not isinstance(doc, dict):
        raise ProtocolError(400, "request body must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError(400, f"'id' must be a string, got {_kind(request_id)}")
    parameters = _object(doc.get("parameters"), "request 'parameters'")
    _check_request_parameters(parameters)
    binary_output = parameters.get("binary_data_output", False)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise ProtocolError(400, "'inputs' must be an array of input tensors")
    inputs: list[InferInput] = []
    offset = json_end
    for index, tensor in enumerate(raw_inputs):
        item, offset = _decode_input(tensor, index, body, offset, header_length is not None)
        inputs.append(item)
    if offset != len(body):
        raise ProtocolError(
            400,
            f"binary data sizes of the inputs add up to {offset - json_end} bytes, but the body "
            f"carries {len(body) - json_end} bytes after the {json_end}-byte JSON header",
        )
    outputs = _decode_outputs(doc.get("outputs"), binary_output)
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_output,
        parameters=parameters,
    )


def _kind(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what} must be an object, got {_kind(value)}")
    return value


def _check_request_parameters(parameters: dict) -> None:
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise ProtocolError(400, f"'binary_data_output' must be true or false, got {_kind(binary)}")
    check_timeout(parameters.get("timeout"))


def _check_unsupported(parameters: dict, what: str) -> None:
    """A 400, as Triton answers a region it does not know: the request names something this
    server does not have, and a client must not retry it as a server fault."""
    for key, feature in _UNSUPPORTED_PARAMETERS.items():
        if key in parameters:
            raise ProtocolError(400, f"{what}: {feature} is not supported by this server")


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ProtocolError(400, f"{what}: 'shape' must be an array of integers")
    if len(value) > MAX_RANK:
        raise ProtocolError(400, f"{what}: rank {len(value)} exceeds the limit of {MAX_RANK}")
    extent = 1  # the size numpy needs to represent the shape, zero dimensions aside
    for dim in value:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise ProtocolError(
                400, f"{what}: 'shape' must hold non-negative integers, got {fmt_shape(value)}"
            )
        extent *= max(dim, 1)
        if extent > _MAX_EXTENT:
            raise ProtocolError(400, f"{what}: shape {fmt_shape(value)} is too large")
    return tuple(value)


def _decode_input(
    tensor: Any, index: int, body: bytes, offset: int, has_binary: bool
) -> tuple[InferInput, int]:
    if not isinstance(tensor, dict):
        raise ProtocolError(400, f"inputs[{index}] must be an object, got {_kind(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise ProtocolError(400, f"inputs[{index}]: 'name' must be a string")
    what = f"input '{name}'"
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str):
        raise ProtocolError(400, f"{what}: 'datatype' must be a string")
    try:
        dtype = numpy_dtype(datatype)
    except ProtocolError as exc:
        raise ProtocolError(exc.status, f"{what}: {exc.message}") from None
    shape = _shape(tensor.get("shape"), what)
    parameters = _object(tensor.get("parameters"), f"{what}: 'parameters'")
    _check_unsupported(parameters, what)
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise ProtocolError(
                400, f"{what}: needs 'data' or 'parameters': {{'binary_data_size': N}}"
            )
        data = _json_tensor(tensor["data"], datatype, shape, what)
        return InferInput(name, datatype, shape, data), offset
    if "data" in tensor:
        raise ProtocolError(400, f"{what}: has both 'data' and 'binary_data_size'")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(400, f"{what}: 'binary_data_size' must be a non-negative integer")
    if not has_binary:
        raise ProtocolError(
            400, f"{what}: has 'binary_data_size' but the request has no {HEADER_LENGTH} header"
        )
    if offset + size > len(body):
        raise ProtocolError(
            400,
            f"{what}: binary data at byte offset {offset} needs {size} bytes, but the body "
            f"ends at {len(body)}",
        )
    if datatype == "BYTES":
        count = element_count(shape)
        flat = deserialize_bytes(
            memoryview(body)[offset : offset + size], what, base_offset=offset, max_count=count
        )
        if len(flat) != count:
            raise ProtocolError(
                400,
                f"{what}: binary data holds {len(flat)} BYTES elements, shape "
                f"{fmt_shape(shape)} needs {count}",
            )
        data = flat.reshape(shape)
    else:
        data = fixed_tensor(body, offset, size, dtype, shape, what)
    return InferInput(name, datatype, shape, data), offset + size


def _json_tensor(data: Any, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """JSON `data` (flat or nested) holding exactly prod(shape) elements, as an array."""
    if not isinstance(data, (list, jsondata.NumericData)):
        raise ProtocolError(400, f"{what}: 'data' must be an array, got {_kind(data)}")
    if datatype == "BYTES":
        arr = jsondata.bytes_array(data, what)
    else:
        arr = jsondata.numeric_array(data, datatype, what)
    count = element_count(shape)
    if arr.shape == shape:
        return arr
    if arr.ndim == 1:
        if arr.size != count:
            raise ProtocolError(
                400,
                f"{what}: 'data' has {arr.size} elements, shape {fmt_shape(shape)} needs {count}",
            )
        return arr.reshape(shape)
    raise ProtocolError(
        400,
        f"{what}: nested 'data' has shape {fmt_shape(arr.shape)}, but 'shape' is "
        f"{fmt_shape(shape)}",
    )


def _decode_outputs(value: Any, binary_output: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ProtocolError(400, "'outputs' must be an array of requested outputs")
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError(400, f"outputs[{index}] must be an object with a string 'name'")
        name = item["name"]
        what = f"output '{name}'"
        if name in seen:
            raise ProtocolError(400, f"{what} is requested more than once")
        seen.add(name)
        parameters = _object(item.get("parameters"), f"{what}: 'parameters'")
        _check_unsupported(parameters, what)
        binary = parameters.get("binary_data", binary_output)
        if not isinstance(binary, bool):
            raise ProtocolError(400, f"{what}: 'binary_data' must be true or false")
        classes = parameters.get("classification", 0)
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
            raise ProtocolError(
                400, f"{what}: 'classification' must be a positive integer (the top K classes)"
            )
        outputs.append(RequestedOutput(name, binary, classes))
    return outputs or None


def _decode_raw(body: bytes, spec: TensorSpec | None) -> InferRequest:
    """`Inference-Header-Content-Length: 0`: the body is the model's one input, batch 1."""
    if spec is None:
        raise ProtocolError(
            400, f"{HEADER_LENGTH}: 0 (raw binary body) needs a model with exactly one input"
        )
    what = f"raw body for input '{spec.name}'"
    dtype = numpy_dtype(spec.datatype)
    shape = list(spec.shape)
    if shape and shape[0] == -1:
        shape[0] = 1
    if shape.count(-1) > 1:
        raise ProtocolError(
            400, f"{what}: shape {fmt_shape(spec.shape)} has more than one variable dimension"
        )
    known = element_count(tuple(d for d in shape if d != -1))
    if spec.datatype == "BYTES":
        flat = deserialize_bytes(body, what)
        count = len(flat)
    else:
        if len(body) % dtype.itemsize:
            raise ProtocolError(
                400,
                f"{what}: {len(body)} bytes is not a whole number of {spec.datatype} elements "
                f"({dtype.itemsize} bytes each)",
            )
        count = len(body) // dtype.itemsize
    if -1 in shape:
        if known == 0 or count % known:
            raise ProtocolError(
                400, f"{what}: {count} elements cannot fill shape {fmt_shape(shape)}"
            )
        shape[shape.index(-1)] = count // known
    elif count != known:
        raise ProtocolError(
            400, f"{what}: {count} elements, but shape {fmt_shape(shape)} needs {known}"
        )
    shape_t = tuple(shape)
    if spec.datatype == "BYTES":
        data = flat.reshape(shape_t)
    else:
        data = fixed_tensor(body, 0, len(body), dtype, shape_t, what)
    return InferRequest(
        id=None,
        inputs=[InferInput(spec.name, spec.datatype, shape_t, data)],
        outputs=None,
        binary_output=True,
        parameters={},
        raw=True,
    )


def encode_infer(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray, bool]],
) -> tuple[bytes, dict[str, str]]:
    """Encode an infer response; outputs flagged binary go after the JSON header.

    Returns the body and the headers to add (Content-Type, and Inference-Header-Content-Length
    when any output is binary). A BYTES output that is not valid UTF-8 cannot travel in JSON and
    is sent binary instead.
    """
    tensors = []
    blobs: list[bytes | memoryview] = []
    finite = True
    for name, arr, binary in outputs:
        arr = np.asarray(arr)
        datatype = datatype_of(arr.dtype)
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if not binary:
            try:
                tensor["data"] = jsondata.tensor_value(arr, flat=True)
                finite = finite and jsondata.is_finite(arr)
            except UnicodeDecodeError:
                binary = True
        if binary:
            blob = tensor_bytes(arr, datatype)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = tensors
    header = jsondata.dumps(doc, finite=finite)
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
    return b"".join([header, *blobs]), headers


def tensor_metadata(spec: TensorSpec) -> dict:
    """`{"name", "datatype", "shape"}` as model metadata lists inputs and outputs."""
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(
    name: str,
    versions: list[str],
    platform: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
) -> dict:
    """The body of GET /v2/models/{name}[/versions/{v}]."""
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": platform,
        "inputs": [tensor_metadata(s) for s in inputs],
        "outputs": [tensor_metadata(s) for s in outputs],
    }


def server_metadata(name: str, version: str, extensions: list[str]) -> dict:
    """The body of GET /v2."""
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_ready(name: str, ready: bool) -> dict:
    """The body of GET /v2/models/{name}[/versions/{v}]/ready."""
    return {"name": name, "ready": bool(ready)}


def error_body(message: str) -> bytes:
    """`{"error": message}` as every protocol writes errors."""
    return jsondata.dumps({"error": message})
