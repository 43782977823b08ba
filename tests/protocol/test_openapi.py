"""The OpenAPI document validates and describes every endpoint with its error responses."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from serve.http.openapi import openapi_document

ENDPOINTS = {
    ("get", "/v2/health/live"),
    ("get", "/v2/health/ready"),
    ("get", "/v2"),
    ("get", "/v2/models/{model_name}"),
    ("get", "/v2/models/{model_name}/versions/{model_version}"),
    ("get", "/v2/models/{model_name}/ready"),
    ("get", "/v2/models/{model_name}/versions/{model_version}/ready"),
    ("post", "/v2/models/{model_name}/infer"),
    ("post", "/v2/models/{model_name}/versions/{model_version}/infer"),
    ("get", "/v2/models/{model_name}/config"),
    ("get", "/v2/models/{model_name}/versions/{model_version}/config"),
    ("get", "/v2/models/stats"),
    ("get", "/v2/models/{model_name}/stats"),
    ("post", "/v2/repository/index"),
    ("post", "/v2/repository/models/{model_name}/load"),
    ("post", "/v2/repository/models/{model_name}/unload"),
    ("post", "/v2/repository/models/{model_name}/versions/{model_version}"),
    ("get", "/v1/models/{model_name}"),
    ("get", "/v1/models/{model_name}/versions/{model_version}"),
    ("get", "/v1/models/{model_name}/metadata"),
    ("get", "/v1/models/{model_name}/versions/{model_version}/metadata"),
    ("post", "/v1/models/{model_name}:predict"),
    ("post", "/v1/models/{model_name}/versions/{model_version}:predict"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/"),
}


def test_document_validates() -> None:
    doc = openapi_document("1.2.3")
    validate(doc)
    assert doc["info"]["version"] == "1.2.3"
    json.dumps(doc, allow_nan=False)  # plain JSON, servable as is


def test_every_endpoint_is_described() -> None:
    paths = openapi_document("0")["paths"]
    described = {(verb, path) for path, ops in paths.items() for verb in ops}
    assert described == ENDPOINTS


def test_errors_use_the_error_schema() -> None:
    doc = openapi_document("0")
    infer = doc["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]
    assert {"200", "400", "404", "413", "415", "503", "504"} <= set(infer)
    for code in ("400", "413", "503"):
        name = infer[code]["$ref"].rsplit("/", 1)[1]
        response = doc["components"]["responses"][name]
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    assert "Retry-After" in doc["components"]["responses"]["Error503"]["headers"]
    predict = doc["paths"]["/v1/models/{model_name}:predict"]["post"]["responses"]
    assert {"400", "404", "413", "415", "503", "504"} <= set(predict)
