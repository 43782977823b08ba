"""TensorFlow Serving REST bodies: `:predict` in row (`instances`) and columnar (`inputs`)
format, model status and signature metadata.

Input dtypes come from the model's specs (TF Serving JSON carries no dtype); BYTES values are
strings or `{"b64": "..."}` objects.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve.protocol import jsondata
from serve.protocol.datatypes import V2_TO_TF, numpy_dtype
from serve.protocol.types import ProtocolError, TensorSpec
from serve.protocol.validate import check_batch, check_shape

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass
class PredictRequest:
    """A decoded `:predict` body: arrays by input name, in the spec's dtype and checked shape."""

    inputs: dict[str, np.ndarray]
    row_format: bool
    signature_name: str | None = None
    #: Row format: how many instances came (every output must answer each with one row).
    instances: int | None = None


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _tensor(value: Any, spec: TensorSpec, what: str) -> np.ndarray:
    try:
        numpy_dtype(spec.datatype)
    except ProtocolError as exc:
        raise ProtocolError(exc.status, f"{what}: {exc.message}") from None
    if spec.datatype == "BYTES":
        return jsondata.bytes_array(value, what, allow_b64=True)
    if _is_b64(value):
        raise ProtocolError(400, f'{what}: {{"b64": ...}} is only for string (BYTES) inputs')
    return jsondata.numeric_array(value, spec.datatype, what)


def _named(value: dict, specs: list[TensorSpec], where: str) -> dict[str, Any]:
    """`value` as {input name: data}, refusing unknown and missing names."""
    names = [s.name for s in specs]
    for key in value:
        if key not in names:
            raise ProtocolError(
                400, f"{where}: unknown input '{key}'; the model's inputs are: {', '.join(names)}"
            )
    for name in names:
        if name not in value:
            raise ProtocolError(400, f"{where}: missing input '{name}'")
    return value


def _rows(instances: Any, specs: list[TensorSpec]) -> dict[str, Any]:
    if not isinstance(instances, list) or not instances:
        raise ProtocolError(400, "'instances' must be a non-empty array")
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named and len(specs) != 1:
        raise ProtocolError(
            400,
            f"the model has {len(specs)} inputs: each instance must be an object of named inputs",
        )
    if not named:
        return {specs[0].name: instances}
    columns: dict[str, list] = {s.name: [] for s in specs}
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict) or _is_b64(instance):
            raise ProtocolError(
                400, f"instances[{index}]: expected an object of named inputs like instances[0]"
            )
        for name, value in _named(instance, specs, f"instances[{index}]").items():
            columns[name].append(value)
    return columns


def _columns(inputs: Any, specs: list[TensorSpec]) -> dict[str, Any]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return _named(inputs, specs, "'inputs'")
    if len(specs) != 1:
        raise ProtocolError(
            400,
            f"the model has {len(specs)} inputs: 'inputs' must be an object of named tensors",
        )
    return {specs[0].name: inputs}


def decode_predict(
    body: bytes, inputs: list[TensorSpec], *, max_batch_size: int = 0
) -> PredictRequest:
    """Decode a TF Serving `:predict` body against the model's input specs."""
    doc = jsondata.loads(body)
    if not isinstance(doc, dict):
        raise ProtocolError(400, "request body must be a JSON object")
    signature = doc.get("signature_name")
    if signature is not None and signature != DEFAULT_SIGNATURE:
        raise ProtocolError(
            400, f"signature_name {str(signature)[:80]!r} not found; use '{DEFAULT_SIGNATURE}'"
        )
    if "instances" in doc and "inputs" in doc:
        raise ProtocolError(
            400, "use either 'instances' (row format) or 'inputs' (columnar format), not both"
        )
    if "instances" in doc:
        row_format, values = True, _rows(doc["instances"], inputs)
    elif "inputs" in doc:
        row_format, values = False, _columns(doc["inputs"], inputs)
    else:
        raise ProtocolError(400, "request needs 'instances' (row format) or 'inputs' (columnar)")
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        what = f"input '{spec.name}'"
        arr = _tensor(values[spec.name], spec, what)
        check_shape(what, spec.shape, arr.shape)
        arrays[spec.name] = arr
    check_batch(inputs, {n: a.shape for n, a in arrays.items()}, max_batch_size)
    instances = len(doc["instances"]) if row_format else None
    return PredictRequest(arrays, row_format, signature, instances)


def _value(arr: np.ndarray) -> Any:
    """A tensor as nested JSON lists; BYTES as strings, or {"b64": ...} when not UTF-8."""
    if arr.dtype.kind not in "OSU":
        return jsondata.tensor_value(arr, flat=False)
    out = np.empty(arr.size, dtype=object)
    out[:] = [_string(v) for v in arr.reshape(-1)]
    return out.reshape(arr.shape).tolist()


def _string(value: Any) -> Any:
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def encode_predict(
    outputs: dict[str, np.ndarray], row_format: bool, instances: int | None = None
) -> bytes:
    """`{"predictions": [...]}` (row format, one entry per instance) or `{"outputs": ...}`.

    Row format needs one row per instance in every output: a detector's boxes, whose rows
    depend on the data, cannot be told apart by instance (400: use the columnar format)."""
    arrays = {name: np.asarray(arr) for name, arr in outputs.items()}
    finite = all(jsondata.is_finite(arr) for arr in arrays.values())
    if row_format:
        sizes = {name: (arr.shape[0] if arr.ndim else None) for name, arr in arrays.items()}
        if None in sizes.values() or len(set(sizes.values())) > 1:
            raise ProtocolError(
                400,
                "row format ('instances') needs every output to share dimension 0 "
                f"(got {sizes}); send the columnar 'inputs' format instead",
            )
        if instances is not None and set(sizes.values()) != {instances}:
            raise ProtocolError(
                400,
                f"row format ('instances') needs one output row per instance ({instances}), "
                f"but the model answered {sizes} rows (they depend on the data); send the "
                "columnar 'inputs' format instead",
            )
    values = {name: _value(arr) for name, arr in arrays.items()}
    if not row_format:
        doc = next(iter(values.values())) if len(values) == 1 else values
        return jsondata.dumps({"outputs": doc}, finite=finite)
    sizes = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(values) == 1:
        return jsondata.dumps({"predictions": next(iter(values.values()))}, finite=finite)
    count = next(iter(sizes.values()))
    rows = [{name: value[i] for name, value in values.items()} for i in range(count)]
    return jsondata.dumps({"predictions": rows}, finite=finite)


_STATES = {
    "READY": "AVAILABLE",
    "AVAILABLE": "AVAILABLE",
    "LOADING": "LOADING",
    "START": "START",
    "UNLOADING": "UNLOADING",
    "UNAVAILABLE": "END",
    "FAILED": "END",
    "END": "END",
}


def version_status(version: str | int, state: str, error_message: str | None = "") -> dict:
    """One entry of `model_version_status`; a failure is state END with error_code UNKNOWN."""
    error_message = error_message or ""
    return {
        "version": str(version),
        "state": _STATES.get(state.upper(), state.upper()),
        "status": {
            "error_code": "UNKNOWN" if error_message else "OK",
            "error_message": error_message,
        },
    }


def model_status(versions: list[tuple[str | int, str, str]]) -> dict:
    """GET /v1/models/{m}[/versions/{v}]: [(version, state, error message), ...]."""
    return {"model_version_status": [version_status(*v) for v in versions]}


def _tensor_info(spec: TensorSpec) -> dict:
    return {
        "dtype": V2_TO_TF.get(spec.datatype, "DT_INVALID"),
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": spec.name,
    }


def model_metadata(
    name: str, version: str | int, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> dict:
    """GET /v1/models/{m}[/versions/{v}]/metadata, shaped like TF Serving's signature_def."""
    signature = {
        "inputs": {s.name: _tensor_info(s) for s in inputs},
        "outputs": {s.name: _tensor_info(s) for s in outputs},
        "method_name": PREDICT_METHOD,
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": {DEFAULT_SIGNATURE: signature}}},
    }
