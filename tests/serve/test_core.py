"""The inference core on its own: the error table, the in-process API, the model-name rule, a
model whose executor is not onnxruntime, and the route table every HTTP face is made from."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from serve.core.admin import AdminPlane
from serve.core.batcher import DeadlineExceeded, QueueFull
from serve.core.errors import Code, ServeError, failure_for, is_unexpected
from serve.core.inference import InferenceCore
from serve.http.app import create_flask_app
from serve.http.codecs import V2, HttpBody, http_answer
from serve.http.openapi import openapi_document
from serve.http.routes import INFERENCE_ROUTES, match_inference
from serve.lifecycle.checks import ModelRejected
from serve.lifecycle.config import ConfigError, ModelConfig
from serve.lifecycle.control import ControlSettings, ModelController
from serve.lifecycle.names import InvalidName
from serve.lifecycle.registry import (
    Model,
    ModelNotFound,
    ModelNotReady,
    ModelRegistry,
    ModelVersion,
    State,
)
from serve.lifecycle.repository import scan_repository
from serve.lifecycle.runtime import InferenceError
from serve.observability import metrics
from serve.protocol import jsondata
from serve.protocol.types import ProtocolError, RequestedOutput, TensorSpec
from serve.settings import Settings
from tests.serve import builders

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 2.0, np.float32)


@pytest.mark.parametrize(
    ("exc", "http", "grpc", "retry"),
    [
        (ProtocolError(400, "bad"), 400, "INVALID_ARGUMENT", False),
        (ProtocolError(413, "big"), 413, "RESOURCE_EXHAUSTED", False),
        (ProtocolError(415, "br"), 415, "INVALID_ARGUMENT", False),
        (ProtocolError(409, "exists"), 409, "ALREADY_EXISTS", False),
        (ModelNotFound("unknown model"), 404, "NOT_FOUND", False),
        (ModelNotReady("loading", loading=True), 503, "UNAVAILABLE", True),
        (ModelNotReady("failed", loading=False), 503, "UNAVAILABLE", False),
        (QueueFull("full"), 503, "UNAVAILABLE", True),
        (DeadlineExceeded("late"), 504, "DEADLINE_EXCEEDED", False),
        (InferenceError("rejected input", 400), 400, "INVALID_ARGUMENT", False),
        (InferenceError("ort failed", 500), 500, "INTERNAL", False),
        (InvalidName("bad name"), 400, "INVALID_ARGUMENT", False),
        (ConfigError("bad config"), 400, "INVALID_ARGUMENT", False),
        (ModelRejected("load probe: ran out of memory"), 400, "INVALID_ARGUMENT", False),
        (ServeError(Code.UNAUTHENTICATED, "token"), 401, "UNAUTHENTICATED", False),
        (ServeError(Code.PERMISSION_DENIED, "token"), 403, "PERMISSION_DENIED", False),
        (ServeError(Code.UNIMPLEMENTED, "no"), 501, "UNIMPLEMENTED", False),
        (KeyError("boom"), 500, "INTERNAL", False),
    ],
)
def test_one_error_table_gives_both_statuses(exc, http, grpc, retry) -> None:
    failure = failure_for(exc)
    assert (failure.status, failure.code.grpc) == (http, grpc)
    assert ("Retry-After" in (failure.headers or {})) is retry
    assert is_unexpected(exc) is isinstance(exc, KeyError)
    if isinstance(exc, KeyError):
        assert failure.message == "internal error (KeyError); see the server log"
    elif isinstance(exc, ModelRejected):
        assert failure.message == "model rejected: load probe: ran out of memory"
    else:
        assert failure.message == str(exc)


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> InferenceCore:
    root = tmp_path_factory.mktemp("core")
    builders.write_model(root, "addmul", builders.add_mul(), config={"max_batch_size": 8})
    builders.write_model(root, "fixed", builders.add_mul(batch_dim=2))
    registry = ModelRegistry(root, "cpu", 1)
    registry.start()
    assert registry.wait_loaded(60)
    return InferenceCore(registry, Settings(model_repository=str(root)))


def _onnxruntime(core: InferenceCore, name: str, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(core.registry.version(name).path))
    return dict(zip(("sum", "product"), session.run(None, feeds), strict=True))


def test_in_process_infer_answers_what_onnxruntime_answers(core: InferenceCore) -> None:
    expected = _onnxruntime(core, "addmul", {"a": A, "b": B})
    before = metrics.REQUESTS.labels("addmul", "1", "inprocess", "200")._value.get()
    got = core.infer("addmul", {"a": A, "b": B})
    assert list(got) == ["sum", "product"]
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    chosen = asyncio.run(core.infer_async("addmul", {"a": A, "b": B}, outputs=["product"]))
    assert list(chosen) == ["product"]
    np.testing.assert_array_equal(chosen["product"], expected["product"])
    after = metrics.REQUESTS.labels("addmul", "1", "inprocess", "200")._value.get()
    assert after == before + 2
    assert core.registry.version("addmul").users == 0, "every hold was released"


def test_in_process_requests_batch_with_each_other(core: InferenceCore) -> None:
    batches = metrics.INFERENCE_BATCHES.labels("addmul", "1")
    samples = metrics.INFERENCE_SAMPLES.labels("addmul", "1")

    async def many() -> list[dict]:
        rows = [{"a": A[i : i + 1], "b": B[i : i + 1]} for i in (0, 1)] * 32
        return await asyncio.gather(*(core.infer_async("addmul", r) for r in rows))

    runs, rows = batches._value.get(), samples._value.get()
    answers = asyncio.run(many())
    assert samples._value.get() - rows == 64
    assert batches._value.get() - runs < 64, "concurrent in-process requests shared batches"
    np.testing.assert_array_equal(answers[1]["sum"], A[1:2] + B[1:2])


def test_in_process_errors_are_those_of_the_error_table(core: InferenceCore) -> None:
    with pytest.raises(ProtocolError, match=r"input 'a': expected shape \[-1, 4\], got \[2, 3\]"):
        core.infer("addmul", {"a": A[:, :3], "b": B[:, :3]})
    with pytest.raises(ProtocolError, match="missing input 'b'"):
        core.infer("addmul", {"a": A})
    with pytest.raises(ProtocolError, match="unknown output 'nope'"):
        core.infer("addmul", {"a": A, "b": B}, outputs=[RequestedOutput("nope", False)])
    with pytest.raises(ModelNotFound, match="unknown model 'nope'; served models: addmul, fixed"):
        core.infer("nope", {"a": A})
    with pytest.raises(InvalidName, match="contains '..'"):
        core.infer("a..b", {"a": A})
    assert core.registry.version("addmul").users == 0


def test_a_model_without_a_batch_dimension_takes_its_inputs_as_given(core: InferenceCore) -> None:
    got = core.infer("fixed", {"a": A, "b": B})
    np.testing.assert_array_equal(got["product"], A * B)


class _Echo:
    """An executor that is not onnxruntime: the first input back, doubled."""

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, feeds, deadline=None, parameters=None):
        self.calls += 1
        return [next(iter(feeds.values())) * 2]

    async def infer_async(self, feeds, deadline=None, parameters=None):
        return self.infer(feeds, deadline, parameters)

    def close(self) -> None:
        pass


def test_a_version_whose_executor_is_not_onnxruntime_is_served_alike(tmp_path: Path) -> None:
    """The core, the codecs and the metrics serve any executor like a batcher over onnxruntime
    sessions: what ensembles and Python models (serve/pipelines/) stand on."""
    echo = _Echo()
    mv = ModelVersion("doubler", 1, tmp_path, ModelConfig(), state=State.READY, batching=True)
    mv.inputs = [TensorSpec("x", "FP32", (-1, 3))]
    mv.outputs = [TensorSpec("y", "FP32", (-1, 3))]
    mv.batcher = echo
    registry = ModelRegistry(tmp_path, "cpu", 1)
    registry.models["doubler"] = Model("doubler", ModelConfig(), None, {1: mv})
    core = InferenceCore(registry, Settings(model_repository=str(tmp_path)))
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(core.infer("doubler", {"x": x})["y"], x * 2)
    body = jsondata.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                       "data": [1, 2, 3]}]})  # fmt: skip
    call = core.serve(V2, "doubler", None, lambda: HttpBody(body, limit=1 << 20))
    status, _, answer = http_answer(call)
    assert status == 200 and jsondata.loads(answer)["outputs"][0]["data"] == [2, 4, 6]
    assert call.record() == {"model": "doubler", "version": "1", "batch_size": 1}
    assert echo.calls == 2 and mv.users == 0


def test_inference_token_is_checked_by_the_core_and_refusals_are_not_counted(
    tmp_path: Path,
) -> None:
    builders.write_model(tmp_path, "addmul", builders.add_mul(), config={"max_batch_size": 8})
    registry = ModelRegistry(tmp_path, "cpu", 1)
    registry.start()
    assert registry.wait_loaded(60)
    core = InferenceCore(registry, Settings(model_repository=str(tmp_path)), "s3cret")
    body = jsondata.dumps({"inputs": [{"name": n, "shape": [1, 4], "datatype": "FP32",
                                       "data": [1, 2, 3, 4]} for n in ("a", "b")]})  # fmt: skip
    read = lambda: HttpBody(body, limit=1 << 20)  # noqa: E731
    counted = metrics.REQUESTS.labels("addmul", "1", "v2", "401")._value.get()
    missing = core.serve(V2, "addmul", None, read)
    wrong = core.serve(V2, "addmul", None, read, credential="Bearer nope")
    right = core.serve(V2, "addmul", None, read, credential="Bearer s3cret")
    assert (missing.status, wrong.status, right.status) == (401, 403, 200)
    assert missing.failure.headers == {"WWW-Authenticate": 'Bearer realm="tapeserve-inference"'}
    assert metrics.REQUESTS.labels("addmul", "1", "v2", "401")._value.get() == counted
    assert core.infer("addmul", {"a": A, "b": B})["sum"].shape == (2, 4), "in-process: no token"


def test_one_name_rule_for_urls_and_repository_folders(tmp_path: Path, caplog) -> None:
    """A folder the URL rule refuses is never loaded (it used to be loaded at start, then
    unloaded by the first poll)."""
    for name in ("ok", "a..b"):
        builders.write_model(tmp_path, name, builders.identity())
    with caplog.at_level(logging.WARNING, logger="tapeserve.repository"):
        assert [entry.name for entry in scan_repository(tmp_path)] == ["ok"]
    assert "a..b" in caplog.text and "contains '..'" in caplog.text
    registry = ModelRegistry(tmp_path, "cpu", 1)
    registry.start()
    assert registry.wait_loaded(60)
    models = registry.models
    assert list(models) == ["ok"]
    controller = ModelController(registry, ControlSettings(mode="poll", probe=False))
    controller.poll_once()
    controller.poll_once()
    assert registry.models is models, "the poll agrees with the start-up scan"


def test_inference_routes_are_listed_once_and_every_face_has_them(core: InferenceCore) -> None:
    controller = ModelController(core.registry, ControlSettings())
    app = create_flask_app(core, AdminPlane(controller, None))
    rules = {rule.rule: rule.methods for rule in app.url_map.iter_rules()}
    paths = openapi_document("0")["paths"]
    for route in INFERENCE_ROUTES:
        assert "POST" in rules[route.rule]
        assert "post" in paths[route.openapi_path]
        example = route.rule.replace("<name>", "m").replace("<version>", "3")
        found = match_inference(example)
        assert found is not None and found[0] is route
        assert found[1:] == ("m", "3" if "<version>" in route.rule else None)
    assert match_inference("/v2/models/m/ready") is None
    assert match_inference("/v1/models/m:classify") is None
