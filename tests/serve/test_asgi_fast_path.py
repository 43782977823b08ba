"""The event-loop inference path (serve.http.fast_path) answers exactly as the Flask views do.

Every request below goes to the same app twice: through Flask (its test client) and through the
ASGI fast path (called as uvicorn calls it); status, headers that carry meaning and body bytes
must agree, and the fast path must not have fallen back to Flask.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest

from serve.app import create_app
from serve.http.fast_path import TapeserveASGI
from serve.observability import metrics
from serve.settings import Settings
from tests.serve.builders import identity

_COMPARED = (
    "content-type",
    "inference-header-content-length",
    "content-encoding",
    "retry-after",
    "www-authenticate",
)


def _repository(root: Path) -> Path:
    import onnx

    for name, config in (("ident", {"max_batch_size": 8}), ("fixed", {"max_batch_size": 0})):
        target = root / name / "1" / "model.onnx"
        target.parent.mkdir(parents=True)
        onnx.save(identity("FP32", ("N", 3)), target)
        (root / name / "config.json").write_text(json.dumps(config))
    return root


def _app(tmp_path: Path, **settings) -> TapeserveASGI:
    worker = create_app(
        Settings(
            model_repository=str(_repository(tmp_path / "repo")), log_level="warning", **settings
        )
    )
    registry = worker.core.registry
    deadline = time.monotonic() + 30
    while not registry.ready(strict=True):
        assert time.monotonic() < deadline, "models did not load"
        time.sleep(0.02)
    app = worker.asgi(threads=2)
    app.fell_back = 0
    wsgi = app._wsgi

    async def counting(scope, receive, send):
        app.fell_back += 1
        await wsgi(scope, receive, send)

    app._wsgi = counting
    return app


def call_asgi(app: TapeserveASGI, path: str, body: bytes, headers: dict[str, str]):
    """One POST through the ASGI app: (status, headers by lower-case name, body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]  # the body in two receives
    messages = [
        {"type": "http.request", "body": c, "more_body": i == 0} for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, *bodies = sent
    out = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], out, b"".join(m.get("body", b"") for m in bodies)


def call_flask(app: TapeserveASGI, path: str, body: bytes, headers: dict[str, str]):
    response = app.wsgi_app.test_client().post(path, data=body, headers=headers)
    out = {k.lower(): v for k, v in response.headers.items()}
    return response.status_code, out, response.get_data()


def _binary(x: np.ndarray, binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": binary_output},
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return head + x.tobytes(), headers


X = np.arange(6, dtype=np.float32).reshape(2, 3)
JSON_OK = json.dumps(
    {
        "id": "r1",
        "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": X.ravel().tolist()}],
    }
).encode()
JSON_HEADERS = {"Content-Type": "application/json"}

CASES = {
    "json": ("/v2/models/ident/infer", JSON_OK, JSON_HEADERS),
    "json version": ("/v2/models/ident/versions/1/infer", JSON_OK, JSON_HEADERS),
    "binary in and out": ("/v2/models/ident/infer", *_binary(X)),
    "binary in, json out": ("/v2/models/ident/infer", *_binary(X, False)),
    "raw body": (
        "/v2/models/ident/infer",
        X[:1].tobytes(),
        {"Inference-Header-Content-Length": "0"},
    ),
    "gzip body": (
        "/v2/models/ident/infer",
        gzip.compress(JSON_OK),
        {**JSON_HEADERS, "Content-Encoding": "gzip"},
    ),
    "gzip answer": (
        "/v2/models/ident/infer",
        json.dumps(
            {"inputs": [{"name": "x", "shape": [200, 3], "datatype": "FP32", "data": [1.5] * 600}]}
        ).encode(),
        {**JSON_HEADERS, "Accept-Encoding": "gzip"},
    ),
    "requested output": (
        "/v2/models/ident/infer",
        json.dumps(
            {
                "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        ).encode(),
        JSON_HEADERS,
    ),
    "unbatched model": ("/v2/models/fixed/infer", JSON_OK, JSON_HEADERS),
    "request id kept": (
        "/v2/models/ident/infer",
        JSON_OK,
        {**JSON_HEADERS, "X-Request-ID": "trace-42"},
    ),
    "bad json": ("/v2/models/ident/infer", b"{nope", JSON_HEADERS),
    "wrong shape": (
        "/v2/models/ident/infer",
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        ).encode(),
        JSON_HEADERS,
    ),
    "wrong datatype": (
        "/v2/models/ident/infer",
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]}
        ).encode(),
        JSON_HEADERS,
    ),
    "unknown output": (
        "/v2/models/ident/infer",
        json.dumps(
            {
                "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                "outputs": [{"name": "nope"}],
            }
        ).encode(),
        JSON_HEADERS,
    ),
    "bad timeout": (
        "/v2/models/ident/infer",
        json.dumps(
            {
                "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                "parameters": {"timeout": -5},
            }
        ).encode(),
        JSON_HEADERS,
    ),
    "bad header length": (
        "/v2/models/ident/infer",
        JSON_OK,
        {**JSON_HEADERS, "Inference-Header-Content-Length": "x1"},
    ),
    "header length past body": (
        "/v2/models/ident/infer",
        JSON_OK,
        {**JSON_HEADERS, "Inference-Header-Content-Length": "99999"},
    ),
    "batch too large": (
        "/v2/models/ident/infer",
        json.dumps(
            {"inputs": [{"name": "x", "shape": [9, 3], "datatype": "FP32", "data": [0] * 27}]}
        ).encode(),
        JSON_HEADERS,
    ),
    "unknown model": ("/v2/models/nope/infer", JSON_OK, JSON_HEADERS),
    "unknown version": ("/v2/models/ident/versions/7/infer", JSON_OK, JSON_HEADERS),
    "bad name": ("/v2/models/a b!/infer", JSON_OK, JSON_HEADERS),
    "dot segment": ("/v2/models/ident/versions/../infer", JSON_OK, JSON_HEADERS),
    "bad gzip": (
        "/v2/models/ident/infer",
        b"not gzip",
        {**JSON_HEADERS, "Content-Encoding": "gzip"},
    ),
    "unknown encoding": (
        "/v2/models/ident/infer",
        JSON_OK,
        {**JSON_HEADERS, "Content-Encoding": "br"},
    ),
    "tf rows": ("/v1/models/ident:predict", b'{"instances": [[1, 2, 3], [4, 5, 6]]}', JSON_HEADERS),
    "tf columns": ("/v1/models/ident/versions/1:predict", b'{"inputs": [[1, 2, 3]]}', JSON_HEADERS),
    "tf gzip body": (
        "/v1/models/ident:predict",
        gzip.compress(b'{"instances": [[1, 2, 3]]}'),
        {**JSON_HEADERS, "Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
    ),
    "tf bad body": ("/v1/models/ident:predict", b'{"instances": [[1, 2]]}', JSON_HEADERS),
    "tf unknown model": ("/v1/models/nope:predict", b'{"instances": [[1, 2, 3]]}', JSON_HEADERS),
    "tf unknown version": (
        "/v1/models/ident/versions/3:predict",
        b'{"instances": [[1, 2, 3]]}',
        JSON_HEADERS,
    ),
    "tf dot segment": ("/v1/models/..:predict", b'{"instances": [[1, 2, 3]]}', JSON_HEADERS),
    "too large": ("/v2/models/ident/infer", b" " * 5000 + JSON_OK, JSON_HEADERS),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> TapeserveASGI:
    return _app(tmp_path_factory.mktemp("fast"), max_body_size=4096)


@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_answers_as_flask(app: TapeserveASGI, case: str) -> None:
    path, body, headers = CASES[case]
    before = app.fell_back
    fast = call_asgi(app, path, body, headers)
    assert app.fell_back == before, "the request went through Flask, not the fast path"
    slow = call_flask(app, path, body, headers)
    assert fast[0] == slow[0], (fast, slow)
    assert fast[2] == slow[2], (fast[2][:300], slow[2][:300])
    for name in _COMPARED:
        assert fast[1].get(name) == slow[1].get(name), name
    assert fast[1]["content-length"] == str(len(fast[2]))
    if "X-Request-ID" in headers:
        assert fast[1]["x-request-id"] == headers["X-Request-ID"] == slow[1]["x-request-id"]
    else:
        assert fast[1]["x-request-id"] != slow[1]["x-request-id"]


def test_fast_path_results_are_the_model_outputs(app: TapeserveASGI) -> None:
    status, headers, body = call_asgi(app, "/v2/models/ident/infer", *_binary(X))
    assert status == 200
    length = int(headers["inference-header-content-length"])
    head = json.loads(body[:length])
    assert head["outputs"][0]["shape"] == [2, 3]
    np.testing.assert_array_equal(np.frombuffer(body[length:], np.float32).reshape(2, 3), X)


def test_other_endpoints_go_through_flask(app: TapeserveASGI) -> None:
    before = app.fell_back
    status, _, body = call_asgi(app, "/v2/repository/index", b"{}", JSON_HEADERS)
    assert status == 200 and {row["name"] for row in json.loads(body)} == {"ident", "fixed"}
    assert app.fell_back == before + 1


def test_fast_path_counts_requests_like_the_flask_view(app: TapeserveASGI) -> None:
    def count(code: str) -> float:
        return metrics.REQUESTS.labels("ident", "1", "v2", code)._value.get()

    ok, bad = count("200"), count("400")
    tf_ok = metrics.REQUESTS.labels("ident", "1", "tfserving", "200")._value.get()
    call_asgi(app, *CASES["json"])
    call_asgi(app, *CASES["wrong shape"])
    call_asgi(app, *CASES["tf rows"])
    assert (count("200"), count("400")) == (ok + 1, bad + 1)
    assert metrics.REQUESTS.labels("ident", "1", "tfserving", "200")._value.get() == tf_ok + 1


def test_inference_token_is_checked_on_the_fast_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TAPESERVE_INFERENCE_TOKEN", "s3cret")
    app = _app(tmp_path)
    path, body, headers = CASES["json"]
    for extra in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret"}):
        fast = call_asgi(app, path, body, {**headers, **extra})
        slow = call_flask(app, path, body, {**headers, **extra})
        assert fast[0] == slow[0] and fast[2] == slow[2]
        assert fast[1].get("www-authenticate") == slow[1].get("www-authenticate")
    assert [
        call_asgi(app, path, body, {**headers, **e})[0]
        for e in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret"})
    ] == [401, 403, 200]


def test_a_cancelled_request_lets_go_of_its_model_version(app: TapeserveASGI) -> None:
    """A request task cancelled mid-way (a worker stopping at once) still releases its hold, so
    a swap or unload of the version is not left waiting for it."""
    registry = app.core.registry
    mv = registry.version("ident", None)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/ident/infer",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
    }

    async def main():
        body_never_ends = asyncio.Event()

        async def receive():
            await body_never_ends.wait()

        async def send(message):
            raise AssertionError(f"nothing should be sent: {message}")

        task = asyncio.ensure_future(app(scope, receive, send))
        for _ in range(100):
            await asyncio.sleep(0.005)
            if mv.users:
                break
        assert mv.users == 1  # held while its body is awaited
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert mv.users == 0


#: Cases that have a gRPC counterpart: the same tensors sent raw to ModelInfer.
_GRPC_CASES = {
    "json": ("ident", None, X, "FP32"),
    "json version": ("ident", "1", X, "FP32"),
    "unbatched model": ("fixed", None, X, "FP32"),
    "wrong shape": ("ident", None, np.zeros((1, 4), np.float32), "FP32"),
    "wrong datatype": ("ident", None, np.zeros((1, 3), np.int32), "INT32"),
    "batch too large": ("ident", None, np.zeros((9, 3), np.float32), "FP32"),
    "unknown model": ("nope", None, X, "FP32"),
    "unknown version": ("ident", "7", X, "FP32"),
}


def test_grpc_answers_as_the_fast_path(tmp_path) -> None:
    """The same core behind gRPC: the same outputs, and for a failure the status derived from
    the same code and the same message as the fast path's `{"error": ...}`."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from tests.support.server import free_port

    worker = create_app(
        Settings(
            model_repository=str(_repository(tmp_path / "repo")),
            log_level="warning",
            grpc_port=free_port(),
        )
    )
    deadline = time.monotonic() + 30
    while not worker.core.registry.ready(strict=True):
        assert time.monotonic() < deadline, "models did not load"
        time.sleep(0.02)
    fast_app = worker.asgi(threads=2)
    grpc = worker.grpc_server()
    grpc.start()
    grpc_status = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND"}
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{worker.core.settings.grpc_port}")
        for case, (model, version, x, datatype) in _GRPC_CASES.items():
            path, body, headers = CASES[case]
            status, _, fast_body = call_asgi(fast_app, path, body, headers)
            tensor = grpcclient.InferInput("x", list(x.shape), datatype)
            tensor.set_data_from_numpy(x)
            try:
                result = client.infer(model, [tensor], model_version=version or "")
            except InferenceServerException as exc:
                assert status != 200, (case, exc)
                assert exc.status() == f"StatusCode.{grpc_status[status]}", case
                assert exc.message() == json.loads(fast_body)["error"], case
                continue
            assert status == 200, case
            out = json.loads(fast_body)["outputs"][0]
            np.testing.assert_array_equal(
                result.as_numpy("y"), np.asarray(out["data"], np.float32).reshape(out["shape"])
            )
        client.close()
    finally:
        grpc.begin_stop(1.0)
        grpc.wait_stopped(5.0)
