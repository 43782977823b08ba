"""Access-log extension: one JSON line per request; X-Request-ID kept or generated, returned."""

from __future__ import annotations

import io
import json
import logging
import os
import time

import pytest
from flask import Flask, abort

from serve.observability import accesslog


@pytest.fixture
def app_and_log() -> tuple[Flask, io.StringIO]:
    app = Flask(__name__)
    accesslog.init_app(app, level="info")
    stream = io.StringIO()
    handler = accesslog.log.handlers[0]
    original = handler.setStream(stream)  # type: ignore[attr-defined]

    @app.post("/v2/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str):
        accesslog.annotate(batch_size=4)
        return {"model_name": name, "request_id": accesslog.request_id()}

    @app.get("/boom")
    def boom():
        abort(503)

    yield app, stream
    handler.setStream(original)  # type: ignore[attr-defined]
    accesslog.log.setLevel(logging.INFO)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_json_line_per_request_with_every_field(app_and_log) -> None:
    app, stream = app_and_log
    client = app.test_client()
    response = client.post("/v2/models/mlp/versions/3/infer", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert response.json["request_id"] == "abc-123"
    (entry,) = _lines(stream)
    assert entry["request_id"] == "abc-123"
    assert entry["method"] == "POST"
    assert entry["path"] == "/v2/models/mlp/versions/3/infer"
    assert (entry["model"], entry["version"]) == ("mlp", "3")
    assert entry["status"] == 200
    assert entry["batch_size"] == 4
    assert entry["latency_ms"] >= 0
    assert entry["time"].endswith("Z") and "T" in entry["time"]


@pytest.mark.parametrize("incoming", [None, "", "has space", "x" * 200, "new\tline"])
def test_missing_or_unsafe_request_id_is_replaced_by_a_generated_one(app_and_log, incoming) -> None:
    app, stream = app_and_log
    headers = {} if incoming is None else {"X-Request-ID": incoming}
    rid = (
        app.test_client()
        .post("/v2/models/m/versions/1/infer", headers=headers)
        .headers["X-Request-ID"]
    )
    assert rid != incoming and len(rid) == 32 and int(rid, 16) >= 0
    assert _lines(stream)[0]["request_id"] == rid


def test_generated_ids_differ_between_requests(app_and_log) -> None:
    app, _ = app_and_log
    client = app.test_client()
    ids = {client.get("/boom").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5


def test_errors_and_unrouted_paths_are_logged_with_their_status(app_and_log) -> None:
    app, stream = app_and_log
    client = app.test_client()
    assert client.get("/boom").status_code == 503
    assert client.get("/nowhere").status_code == 404
    first, second = _lines(stream)
    assert (first["status"], first["level"], first["model"]) == (503, "warning", None)
    assert (second["status"], second["level"], second["path"]) == (404, "info", "/nowhere")


def test_level_warning_keeps_only_server_errors(app_and_log) -> None:
    app, stream = app_and_log
    accesslog.log.setLevel(accesslog.parse_level("warning"))
    client = app.test_client()
    client.post("/v2/models/m/versions/1/infer")
    client.get("/boom")
    assert [e["status"] for e in _lines(stream)] == [503]
    assert client.get("/boom").headers["X-Request-ID"]  # the id is returned even when not logged


def test_level_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("TAPESERVE_LOG_LEVEL", "ERROR")
    accesslog.init_app(Flask(__name__))
    try:
        assert accesslog.log.level == logging.ERROR
    finally:
        accesslog.log.setLevel(logging.INFO)


def test_unknown_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="log level must be one of debug|info"):
        accesslog.parse_level("loud")


@pytest.mark.slow
def test_real_server_log_level_warning_silences_successful_requests(
    tmp_path, tapeserve_server
) -> None:
    from tests.serve.builders import identity, write_model

    write_model(tmp_path, "ident", identity())
    write_model(tmp_path, "broken", b"not a model")
    server = tapeserve_server(tmp_path, extra_args=["--log-level", "warning"])
    response = server.post("/v1/models/ident:predict", json={"instances": [[1, 2, 3]]})
    assert response.status_code == 200 and response.headers["X-Request-ID"]
    assert server.get("/v2/health/ready").status_code == 200
    failed = server.post("/v1/models/broken:predict", json={"instances": [[1, 2, 3]]})
    assert failed.status_code == 503

    def logged() -> list[dict]:
        return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]

    deadline = time.monotonic() + 10
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a wrongly logged 200 would have been written by now too
    assert [(e["status"], e["request_id"]) for e in logged()] == [
        (503, failed.headers["X-Request-ID"])
    ]


def test_probes_and_scrapes_are_logged_at_debug_only(app_and_log) -> None:
    app, stream = app_and_log

    @app.get("/v2/health/ready")
    def ready():
        return "", 503

    client = app.test_client()
    client.get("/v2/health/ready")
    assert stream.getvalue() == ""
    accesslog.log.setLevel(logging.DEBUG)
    client.get("/v2/health/ready")
    assert [(e["status"], e["level"]) for e in _lines(stream)] == [(503, "debug")]


def test_generated_request_ids_are_unique_within_and_across_forked_workers() -> None:
    new_request_id = accesslog.new_request_id
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker forked from the same parent draws its own prefix
        os.write(write_fd, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read_fd, 64).decode()
    os.close(read_fd)
    os.close(write_fd)
    assert len(child) == 32 and child[:16] != next(iter(ids))[:16]
