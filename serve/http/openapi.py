"""The OpenAPI 3.0 document of every HTTP endpoint, served at GET /openapi.json.

Schemas are precise enough for schemathesis to generate requests and check responses, error
responses included: every error is `{"error": "<message>"}`.
"""

from __future__ import annotations

from typing import Any

from serve.http.routes import INFERENCE_ROUTES
from serve.protocol.datatypes import V2_DATATYPES
from serve.protocol.encoding import SUPPORTED

_ERROR_TEXT = {
    "400": "Malformed request: bad JSON, wrong shape or datatype, unknown or missing input",
    "401": "A token is required and none was sent",
    "403": "The token sent is not valid",
    "404": "Unknown model or version",
    "409": "That model version exists already; upload under a new version number",
    "405": "Method not allowed on this path",
    "413": "Body larger than the configured limit, before or after decompression",
    "415": "Unsupported Content-Encoding",
    "500": "The model failed while running this request; the server keeps serving",
    "501": "A protocol feature this server does not implement",
    "503": "Not ready, model loading, queue full or draining; retry after Retry-After seconds",
    "504": "The request's deadline passed before it could run",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    out: dict[str, Any] = {}
    for code in codes:
        response = {"$ref": f"#/components/responses/Error{code}"}
        out[str(code)] = response
    return out


def _op(
    op_id: str,
    summary: str,
    tag: str,
    ok: dict,
    errors: tuple[int, ...],
    params: list[dict] | None = None,
    body: dict | None = None,
    security: bool = False,
) -> dict:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [tag],
        "responses": {"200": ok, **_errors(*errors)},
    }
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    if security:
        op["security"] = [{"bearerAuth": []}]
    return op


_MODEL = {"$ref": "#/components/parameters/model_name"}
_VERSION = {"$ref": "#/components/parameters/model_version"}
_LOOKUP_ERRORS = (400, 404, 503)
_INFER_ERRORS = (400, 401, 403, 404, 413, 415, 500, 503, 504)
_PREDICT_ERRORS = (400, 401, 403, 404, 413, 415, 500, 503, 504)
_ADMIN_ERRORS = (400, 401, 403, 404, 500, 501, 503)

_TENSOR_DATA = {
    "type": "array",
    "description": "Row-major tensor data, flat or nested; exactly prod(shape) elements. "
    "Numbers (NaN, Infinity, -Infinity allowed), true/false for BOOL, strings for BYTES.",
    "items": {},
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what was wrong"}},
    },
    "Datatype": {"type": "string", "enum": list(V2_DATATYPES)},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {"ready": {"type": "boolean"}},
    },
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "TensorMetadata": {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": _ref("Datatype"),
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": -1},
                "description": "-1 marks a variable dimension",
            },
        },
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string", "example": "onnxruntime_onnx"},
            "inputs": {"type": "array", "items": _ref("TensorMetadata")},
            "outputs": {"type": "array", "items": _ref("TensorMetadata")},
        },
    },
    "ModelReady": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "InferParameters": {
        "type": "object",
        "properties": {
            "binary_data_output": {"type": "boolean"},
            "timeout": {
                "type": "integer",
                "minimum": 0,
                "description": "deadline in microseconds from arrival",
            },
        },
    },
    "InferInput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": _ref("Datatype"),
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data_size": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "bytes of this input after the JSON header "
                        "(binary tensor extension); replaces 'data'",
                    }
                },
            },
            "data": _TENSOR_DATA,
        },
    },
    "InferRequestedOutput": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {
                "type": "object",
                "properties": {"binary_data": {"type": "boolean"}},
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": _ref("InferParameters"),
            "inputs": {"type": "array", "items": _ref("InferInput")},
            "outputs": {"type": "array", "items": _ref("InferRequestedOutput")},
        },
    },
    "InferOutput": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": _ref("Datatype"),
            "parameters": {
                "type": "object",
                "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            },
            "data": _TENSOR_DATA,
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "outputs": {"type": "array", "items": _ref("InferOutput")},
        },
    },
    "ModelConfig": {
        "type": "object",
        "description": "the model's effective configuration (config.json merged with defaults)",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "max_batch_size": {"type": "integer", "minimum": 0},
            "max_queue_delay_ms": {"type": "number", "minimum": 0},
        },
    },
    "ModelStats": {
        "type": "object",
        "required": ["model_stats"],
        "properties": {
            "model_stats": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "inference_count": {"type": "integer", "minimum": 0},
                        "execution_count": {"type": "integer", "minimum": 0},
                    },
                },
            }
        },
    },
    "RepositoryIndexRequest": {
        "type": "object",
        "properties": {"ready": {"type": "boolean", "description": "only ready models"}},
    },
    "RepositoryIndex": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "state": {"type": "string"},
                "reason": {"type": "string", "nullable": True},
            },
        },
    },
    "TfVersionStatus": {
        "type": "object",
        "required": ["model_version_status"],
        "properties": {
            "model_version_status": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["version", "state", "status"],
                    "properties": {
                        "version": {"type": "string"},
                        "state": {
                            "type": "string",
                            "enum": [
                                "UNKNOWN",
                                "START",
                                "LOADING",
                                "AVAILABLE",
                                "UNLOADING",
                                "END",
                            ],
                        },
                        "status": {
                            "type": "object",
                            "required": ["error_code", "error_message"],
                            "properties": {
                                "error_code": {"type": "string"},
                                "error_message": {"type": "string"},
                            },
                        },
                    },
                },
            }
        },
    },
    "TfTensorInfo": {
        "type": "object",
        "required": ["dtype", "tensor_shape", "name"],
        "properties": {
            "dtype": {"type": "string"},
            "name": {"type": "string"},
            "tensor_shape": {
                "type": "object",
                "properties": {
                    "dim": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"size": {"type": "string"}, "name": {"type": "string"}},
                        },
                    },
                    "unknown_rank": {"type": "boolean"},
                },
            },
        },
    },
    "TfMetadata": {
        "type": "object",
        "required": ["model_spec", "metadata"],
        "properties": {
            "model_spec": {
                "type": "object",
                "required": ["name", "version"],
                "properties": {
                    "name": {"type": "string"},
                    "signature_name": {"type": "string"},
                    "version": {"type": "string"},
                },
            },
            "metadata": {
                "type": "object",
                "required": ["signature_def"],
                "properties": {
                    "signature_def": {
                        "type": "object",
                        "required": ["signature_def"],
                        "properties": {
                            "signature_def": {
                                "type": "object",
                                "additionalProperties": {
                                    "type": "object",
                                    "required": ["inputs", "outputs", "method_name"],
                                    "properties": {
                                        "inputs": {
                                            "type": "object",
                                            "additionalProperties": _ref("TfTensorInfo"),
                                        },
                                        "outputs": {
                                            "type": "object",
                                            "additionalProperties": _ref("TfTensorInfo"),
                                        },
                                        "method_name": {"type": "string"},
                                    },
                                },
                            }
                        },
                    }
                },
            },
        },
    },
    "TfPredictRequest": {
        "type": "object",
        "description": "exactly one of 'instances' (row format) or 'inputs' (columnar format)",
        "properties": {
            "signature_name": {"type": "string", "example": "serving_default"},
            "instances": {
                "type": "array",
                "description": "one value (single input) or object of named inputs per instance; "
                'strings may be {"b64": "..."}',
                "items": {},
            },
            "inputs": {"description": "a tensor (single input) or an object name -> tensor"},
        },
    },
    "TfPredictResponse": {
        "type": "object",
        "description": "'predictions' for row-format requests, 'outputs' for columnar ones",
        "properties": {
            "predictions": {"type": "array", "items": {}},
            "outputs": {},
        },
    },
}

_PARAMETERS = {
    "model_name": {
        "name": "model_name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    },
    "model_version": {
        "name": "model_version",
        "in": "path",
        "required": True,
        "description": "a positive integer version",
        "schema": {"type": "string"},
    },
    "header_length": {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "description": "bytes of JSON at the start of a binary-extension body; 0 = the whole "
        "body is the model's single input tensor (batch 1)",
        "schema": {"type": "integer", "minimum": 0},
    },
    "content_encoding": {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": [*SUPPORTED, "identity"]},
    },
    "accept_encoding": {
        "name": "Accept-Encoding",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "example": "gzip"},
    },
}


def _responses() -> dict:
    out: dict[str, Any] = {}
    for code, text in _ERROR_TEXT.items():
        response: dict[str, Any] = {
            "description": text,
            "content": {"application/json": {"schema": _ref("Error")}},
        }
        if code == "503":
            response["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
            }
        out[f"Error{code}"] = response
    return out


def _not_ready(op: dict, schema: str) -> dict:
    """Readiness answers 503 with its usual body (ready: false), as Triton does."""
    op["responses"]["503"] = {
        "description": "not ready",
        "content": {"application/json": {"schema": _ref(schema)}},
    }
    return op


def _infer_op(op_id: str, versioned: bool) -> dict:
    params = [_MODEL, *([_VERSION] if versioned else [])]
    params += [
        {"$ref": f"#/components/parameters/{p}"}
        for p in ("header_length", "content_encoding", "accept_encoding")
    ]
    body = {
        "required": True,
        "description": "JSON, or with Inference-Header-Content-Length a JSON header followed "
        "by raw tensors (binary tensor extension)",
        "content": {
            "application/json": {"schema": _ref("InferRequest")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    ok = {
        "description": "inference result (binary outputs follow the JSON header)",
        "headers": {
            "Inference-Header-Content-Length": {
                "description": "present when outputs are binary",
                "schema": {"type": "integer"},
            }
        },
        "content": {
            "application/json": {"schema": _ref("InferResponse")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    version = " of one version" if versioned else ""
    return _op(op_id, f"Run inference{version}", "v2", ok, _INFER_ERRORS, params, body)


def _predict_op(op_id: str, versioned: bool) -> dict:
    params = [_MODEL, *([_VERSION] if versioned else [])]
    params += [
        {"$ref": "#/components/parameters/content_encoding"},
        {"$ref": "#/components/parameters/accept_encoding"},
    ]
    body = {"required": True, "content": {"application/json": {"schema": _ref("TfPredictRequest")}}}
    return _op(
        op_id,
        "TF Serving predict",
        "tfserving",
        _json(_ref("TfPredictResponse")),
        _PREDICT_ERRORS,
        params,
        body,
    )


def _upload(params: list[dict], ok: dict) -> dict:
    """Admin upload of a raw ONNX file: 201 loaded (explicit mode), 202 left to the poll."""
    body = {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
    op = _op(
        "repositoryModelUpload",
        "Upload a new model version (admin): vetted, then written atomically",
        "repository",
        ok,
        (*_ADMIN_ERRORS, 409, 413, 415),
        params,
        body,
        security=True,
    )
    op["responses"] = {"201": ok, "202": ok, **op["responses"]}
    del op["responses"]["200"]
    return op


def _paths() -> dict:
    mv = [_MODEL, _VERSION]
    ok_empty = {"description": "done", "content": {"application/json": {"schema": {}}}}
    admin_body = {
        "required": False,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
    paths: dict[str, Any] = {
        "/v2/health/live": {
            "get": _op("serverLive", "Liveness", "health", _json(_ref("Live")), ())
        },
        "/v2/health/ready": {
            "get": _not_ready(
                _op("serverReady", "Readiness", "health", _json(_ref("Ready")), ()), "Ready"
            )
        },
        "/v2": {
            "get": _op("serverMetadata", "Server metadata", "v2", _json(_ref("ServerMetadata")), ())
        },
        "/v2/models/stats": {
            "get": _op(
                "allModelStats", "Statistics of all models", "v2", _json(_ref("ModelStats")), (404,)
            )
        },
        "/v2/models/{model_name}": {
            "get": _op(
                "modelMetadata",
                "Model metadata",
                "v2",
                _json(_ref("ModelMetadata")),
                _LOOKUP_ERRORS,
                [_MODEL],
            )
        },
        "/v2/models/{model_name}/versions/{model_version}": {
            "get": _op(
                "modelVersionMetadata",
                "Model version metadata",
                "v2",
                _json(_ref("ModelMetadata")),
                _LOOKUP_ERRORS,
                mv,
            )
        },
        "/v2/models/{model_name}/ready": {
            "get": _not_ready(
                _op(
                    "modelReady",
                    "Model readiness",
                    "v2",
                    _json(_ref("ModelReady")),
                    _LOOKUP_ERRORS,
                    [_MODEL],
                ),
                "ModelReady",
            )
        },
        "/v2/models/{model_name}/versions/{model_version}/ready": {
            "get": _not_ready(
                _op(
                    "modelVersionReady",
                    "Model version readiness",
                    "v2",
                    _json(_ref("ModelReady")),
                    _LOOKUP_ERRORS,
                    mv,
                ),
                "ModelReady",
            )
        },
        "/v2/models/{model_name}/config": {
            "get": _op(
                "modelConfig",
                "Effective model configuration",
                "v2",
                _json(_ref("ModelConfig")),
                (400, 404),
                [_MODEL],
            )
        },
        "/v2/models/{model_name}/versions/{model_version}/config": {
            "get": _op(
                "modelVersionConfig",
                "Effective model configuration (version given)",
                "v2",
                _json(_ref("ModelConfig")),
                (400, 404),
                mv,
            )
        },
        "/v2/models/{model_name}/stats": {
            "get": _op(
                "modelStats",
                "Model statistics",
                "v2",
                _json(_ref("ModelStats")),
                (400, 404),
                [_MODEL],
            )
        },
        "/v2/repository/index": {
            "post": _op(
                "repositoryIndex",
                "Models in the repository with their state",
                "repository",
                _json(_ref("RepositoryIndex")),
                (400,),
                body={
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RepositoryIndexRequest")}},
                },
            )
        },
        "/v2/repository/models/{model_name}/load": {
            "post": _op(
                "repositoryModelLoad",
                "Load a model (admin)",
                "repository",
                ok_empty,
                _ADMIN_ERRORS,
                [_MODEL],
                admin_body,
                security=True,
            )
        },
        "/v2/repository/models/{model_name}/unload": {
            "post": _op(
                "repositoryModelUnload",
                "Unload a model (admin)",
                "repository",
                ok_empty,
                _ADMIN_ERRORS,
                [_MODEL],
                admin_body,
                security=True,
            )
        },
        "/v2/repository/models/{model_name}/versions/{model_version}": {
            "post": _upload(mv, ok_empty)
        },
        "/v1/models/{model_name}": {
            "get": _op(
                "tfModelStatus",
                "TF Serving model status",
                "tfserving",
                _json(_ref("TfVersionStatus")),
                (400, 404),
                [_MODEL],
            )
        },
        "/v1/models/{model_name}/versions/{model_version}": {
            "get": _op(
                "tfModelVersionStatus",
                "TF Serving model version status",
                "tfserving",
                _json(_ref("TfVersionStatus")),
                (400, 404),
                mv,
            )
        },
        "/v1/models/{model_name}/metadata": {
            "get": _op(
                "tfModelMetadata",
                "TF Serving signature metadata",
                "tfserving",
                _json(_ref("TfMetadata")),
                _LOOKUP_ERRORS,
                [_MODEL],
            )
        },
        "/v1/models/{model_name}/versions/{model_version}/metadata": {
            "get": _op(
                "tfModelVersionMetadata",
                "TF Serving signature metadata of one version",
                "tfserving",
                _json(_ref("TfMetadata")),
                _LOOKUP_ERRORS,
                mv,
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics",
                "ops",
                {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                (),
            )
        },
        "/openapi.json": {
            "get": _op("openapi", "This document", "ops", _json({"type": "object"}), ())
        },
        "/": {
            "get": _op(
                "statusPage",
                "Status page: models, versions, state, device",
                "ops",
                {
                    "description": "HTML page",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                (),
            )
        },
    }
    for route in INFERENCE_ROUTES:  # the inference routes, listed once in serve/http/routes.py
        op = _infer_op if route.codec.protocol == "v2" else _predict_op
        paths[route.openapi_path] = {"post": op(route.operation, "<version>" in route.rule)}
    return paths


def openapi_document(server_version: str) -> dict:
    """The OpenAPI 3.0.3 description of every endpoint of the server."""
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "tapeserve",
            "version": server_version,
            "description": "Open Inference Protocol (KServe V2) with Triton's binary tensor "
            "extension, TensorFlow Serving REST, Prometheus metrics. Every error body is "
            '{"error": "<message>"}.',
        },
        "tags": [
            {"name": "health"},
            {"name": "v2", "description": "Open Inference Protocol"},
            {"name": "repository", "description": "model repository extension"},
            {"name": "tfserving", "description": "TensorFlow Serving REST API"},
            {"name": "ops"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _SCHEMAS,
            "parameters": _PARAMETERS,
            "responses": _responses(),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }
