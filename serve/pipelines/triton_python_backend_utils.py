"""The parts of Triton's `triton_python_backend_utils` that Python models use, so that a model.py
written for Triton's Python backend runs unchanged. The model's process imports this module
under Triton's name (serve.pipelines.python_stub).

Covered: Tensor, InferenceRequest (the requests `execute` gets, and BLS `exec`/`async_exec`),
InferenceResponse, TritonError, TritonModelException, Logger, the get_*_by_name helpers, the
type tables and BYTES (de)serialisation, the flag constants. Not covered: decoupled response
senders, the model-loading API, DLPack on GPU memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
#: Triton's TRITONSERVER_DataType numbers, as triton_to_numpy_type takes them.
_TYPE_NUMBERS = [
    np.bool_,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
    np.object_,
]

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

#: Set by the model's process: sends a BLS request to the server, returns an InferenceResponse.
_bls_call: Callable[[InferenceRequest], InferenceResponse] | None = None


def triton_string_to_numpy(triton_type_string: str) -> type:
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int) -> type | None:
    return _TYPE_NUMBERS[data_type - 1] if 1 <= data_type <= len(_TYPE_NUMBERS) else None


def numpy_to_triton_type(data_type: Any) -> int | None:
    if data_type in (np.object_, np.bytes_):
        return 13
    for number, candidate in enumerate(_TYPE_NUMBERS[:-1], start=1):
        if data_type == candidate:
            return number
    return None


def serialize_byte_tensor(input_tensor: np.ndarray) -> bytes | tuple | None:
    """Length-prefixed (4-byte little-endian) elements in C order, as Triton writes BYTES."""
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        return None
    parts = []
    for item in input_tensor.ravel(order="C"):
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def deserialize_bytes_tensor(encoded_tensor: bytes) -> np.ndarray:
    items, offset = [], 0
    while offset < len(encoded_tensor):
        (length,) = struct.unpack_from("<I", encoded_tensor, offset)
        offset += 4
        items.append(bytes(encoded_tensor[offset : offset + length]))
        offset += length
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


class TritonError:
    """An error a response carries (`InferenceResponse(error=...)`); the code picks the status."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED = 0, 1, 2, 3, 4, 5
    ALREADY_EXISTS, CANCELLED = 6, 7

    def __init__(self, message: str, code: int = 1) -> None:
        self._message = str(message)
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, {self._code})"


class TritonModelException(Exception):
    """Raised by a model from initialize, execute or finalize."""

    def message(self) -> str:
        return str(self)


class Tensor:
    """A named numpy array."""

    def __init__(self, name: str, data: np.ndarray) -> None:
        if not isinstance(data, np.ndarray):
            raise TritonModelException(f"tensor {name!r}: expected a numpy array, got {type(data)}")
        self._name = name
        self._data = data

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._data

    def shape(self) -> list[int]:
        return list(self._data.shape)

    def triton_dtype(self) -> int | None:
        return numpy_to_triton_type(self._data.dtype.type)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        return self._data.__dlpack__()

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        return Tensor(name, np.from_dlpack(capsule))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, shape={self.shape()}, dtype={self._data.dtype})"


class InferenceRequest:
    """A request `execute` receives, or one a model builds to call another model (BLS)."""

    def __init__(
        self,
        model_name: str = "",
        requested_output_names: list[str] | None = None,
        inputs: list[Tensor] | None = None,
        request_id: str = "",
        correlation_id: int = 0,
        model_version: int = -1,
        flags: int = 0,
        timeout: int = 0,
        parameters: dict | str | None = None,
        **_ignored: Any,  # preferred_memory, trace: not meaningful here
    ) -> None:
        self._model_name = model_name
        self._requested = list(requested_output_names or [])
        self._inputs = list(inputs or [])
        self._request_id = request_id
        self._correlation_id = correlation_id
        self.model_version = model_version
        self._flags = flags
        self._timeout = timeout
        if isinstance(parameters, str):
            parameters = json.loads(parameters or "{}")
        self._parameters = dict(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> int:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def timeout(self) -> int:
        return self._timeout

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def model_name(self) -> str:
        return self._model_name

    def is_cancelled(self) -> bool:
        return False

    def set_release_flags(self, flags: int) -> None:
        """Rescheduling is a sequence-batching feature; requests here are always released."""

    def get_response_sender(self) -> Any:
        raise TritonModelException("decoupled models (response senders) are not supported")

    def exec(self, decoupled: bool = False) -> InferenceResponse:
        """Run this request on another served model and wait for its response (BLS)."""
        if decoupled:
            raise TritonModelException("decoupled BLS calls are not supported")
        if _bls_call is None:
            raise TritonModelException("BLS requests can only be sent from execute()")
        return _bls_call(self)

    async def async_exec(self, decoupled: bool = False) -> InferenceResponse:
        """`exec` from an `async def execute`; the calls of one model are sent one at a time."""
        return await asyncio.get_running_loop().run_in_executor(None, self.exec, decoupled)


class InferenceResponse:
    """The answer to one request: output tensors, or an error."""

    def __init__(
        self,
        output_tensors: list[Tensor] | None = None,
        error: TritonError | str | None = None,
        parameters: dict | str | None = None,
    ) -> None:
        self._outputs = list(output_tensors or [])
        if isinstance(error, str):
            error = TritonError(error)
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters or "{}")
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    for item in model_config.get("input", []):
        if item["name"] == name:
            return item
    return None


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    for item in model_config.get("output", []):
        if item["name"] == name:
            return item
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


class Logger:
    """`pb_utils.Logger.log_info(...)`: lines in the server log, tagged with the model."""

    _log = logging.getLogger("tapeserve.python_model")

    @classmethod
    def log(cls, message: str, level: int = 0) -> None:
        cls._log.log(
            {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR}.get(level, 10), message
        )

    @classmethod
    def log_info(cls, message: str) -> None:
        cls._log.info(message)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls._log.warning(message)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls._log.error(message)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls._log.debug(message)

    INFO, WARNING, ERROR, VERBOSE = 0, 1, 2, 3


def _configure_logger(model: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"[%(asctime)s] [%(process)d] [%(levelname)s] python model {model}: %(message)s"
        )
    )
    Logger._log.addHandler(handler)
    Logger._log.setLevel(logging.INFO)
    Logger._log.propagate = False
