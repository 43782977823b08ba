"""The admin plane and the name guard against a real Gunicorn server (explicit mode, 2 workers).

Tokens: 401 without, 403 when wrong, the plane disabled (403) when no token is configured; every
traversal name of security.md gets a 400 with a reason and nothing is written outside the
repository; uploads are vetted before they enter the repository; load, unload and uploads reach
both workers.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.hardening import hostile
from tests.support.server import RunningServer, start_server

ADMIN = "admin-7f3a9c"
INFER = "infer-51b2e0"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
INFER_HEADERS = {"Authorization": f"Bearer {INFER}"}
OCTET = {**ADMIN_HEADERS, "Content-Type": "application/octet-stream"}
X = [[0.0, 0.0, 0.0, 0.0]]


def _model_bytes(offset: float) -> bytes:
    """y = x + offset: each version answers with its own number."""
    return hostile.add_weight_model(np.full(4, offset)).SerializeToString()


def _infer(srv: RunningServer, name: str, version: str | None = None) -> requests.Response:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}
    return srv.post(path, json=body, headers=INFER_HEADERS)


def _converged(srv: RunningServer, check, tries: int = 40, streak: int = 8) -> None:
    """Wait until `check(response)` holds for `streak` answers in a row (both workers agree)."""
    ok = 0
    for _ in range(tries * streak):
        ok = ok + 1 if check(_infer(srv, "add")) else 0
        if ok >= streak:
            return
        time.sleep(0.02)
    raise AssertionError(f"workers did not converge:\n{srv.log()[-3000:]}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("admin") / "repo"
    (root / "add" / "1").mkdir(parents=True)
    (root / "add" / "1" / "model.onnx").write_bytes(_model_bytes(1.0))
    return root


@pytest.fixture(scope="module")
def srv(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    token_file = tmp_path_factory.mktemp("secrets") / "admin-token"
    token_file.write_text(ADMIN + "\n")
    server = start_server(
        repo,
        workers=2,
        threads=4,
        extra_args=[
            "--model-control-mode",
            "explicit",
            "--poll-interval",
            "0.2",
            "--admin-token-file",
            str(token_file),
        ],  # fmt: skip
        env={"TAPESERVE_INFERENCE_TOKEN": INFER},
    )
    yield server
    server.stop()


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v2/repository/models/add/load",
        "/v2/repository/models/add/unload",
        "/v2/repository/models/add/versions/9",
    ],
)
def test_admin_needs_the_token(srv: RunningServer, path: str) -> None:
    missing = srv.post(path)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "Authorization: Bearer" in missing.json()["error"]
    basic = srv.post(path, headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401
    wrong = srv.post(path, headers={"Authorization": f"Bearer {ADMIN}x"})
    assert wrong.status_code == 403 and "not valid" in wrong.json()["error"]
    infer_token = srv.post(path, headers=INFER_HEADERS)
    assert infer_token.status_code == 403
    assert _infer(srv, "add").json()["model_version"] == "1"  # nothing changed


def test_inference_token_guards_infer_only(srv: RunningServer) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X}]}
    missing = srv.post("/v2/models/add/infer", json=body)
    assert missing.status_code == 401 and "WWW-Authenticate" in missing.headers
    wrong = srv.post("/v2/models/add/infer", json=body, headers=ADMIN_HEADERS)
    assert wrong.status_code == 403
    predict = srv.post("/v1/models/add:predict", json={"instances": X})
    assert predict.status_code == 401
    assert srv.post("/v1/models/add:predict", json={"instances": X}, headers=INFER_HEADERS).ok
    assert _infer(srv, "add").status_code == 200
    for path in ("/v2/health/ready", "/v2/models/add", "/v2/models/add/ready", "/metrics"):
        assert srv.get(path).status_code == 200, path
    assert srv.post("/v2/repository/index").status_code == 200  # public, read-only


def test_admin_plane_is_disabled_without_a_token(repo: Path) -> None:
    server = start_server(repo, workers=1, extra_args=["--model-control-mode", "explicit"])
    try:
        for path in ("/v2/repository/models/add/load", "/v2/repository/models/add/versions/9"):
            answer = server.post(path, headers=ADMIN_HEADERS)
            assert answer.status_code == 403
            assert "admin plane is disabled" in answer.json()["error"]
            assert "--admin-token-file" in answer.json()["error"]
        assert server.post("/v2/repository/index").status_code == 200
    finally:
        server.stop()
    assert not (repo / "add" / "9").exists()


# -- names -------------------------------------------------------------------------------------

TRAVERSAL_NAMES = [
    ("../../etc/passwd", "'..'"),
    ("/etc/passwd", "empty"),
    ("model/..", "'..' segment"),
    ("..", "'..'"),
    (" model", "whitespace"),
    ("model\t", "whitespace"),
    ("", "empty"),
    ("model\x00", "NUL"),
    ("%2e%2e%2fetc", "'%'"),
    (".hidden", "not allowed"),
]


def _raw(srv: RunningServer, method: str, path: str, headers: dict | None = None):
    """Send `path` exactly as given (requests would normalise dot segments away)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request(method, path, body=b"{}", headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def _quoted(name: str) -> str:
    """The name as a client puts it in a URL path: every byte outside [A-Za-z0-9._-] escaped."""
    return "".join(
        ch if ch.isascii() and (ch.isalnum() or ch in "._-/") else f"%{ord(ch):02X}" for ch in name
    ).replace("%", "%25" if name.startswith("%") else "%")


@pytest.mark.parametrize(("name", "why"), TRAVERSAL_NAMES)
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("GET", "/v2/models/{}/ready"),
        ("POST", "/v2/models/{}/infer"),
        ("GET", "/v2/models/{}/versions/1"),
        ("POST", "/v1/models/{}:predict"),
        ("POST", "/v2/repository/models/{}/load"),
        ("POST", "/v2/repository/models/{}/versions/1"),
    ],
)
def test_traversal_names_get_400(
    srv: RunningServer, repo: Path, name: str, why: str, method: str, template: str
) -> None:
    headers = {**INFER_HEADERS} if "repository" not in template else {**OCTET}
    status, doc = _raw(srv, method, template.format(_quoted(name)), headers)
    assert status == 400, doc
    assert why in doc["error"]
    outside = {p.name for p in repo.parent.iterdir()}
    assert outside == {"repo"}  # nothing was written beside the repository


def test_upload_with_encoded_slash_writes_nothing_outside(srv: RunningServer, repo: Path) -> None:
    status, doc = _raw(srv, "POST", "/v2/repository/models/..%2F..%2Fevil/versions/1", OCTET)
    assert status == 400 and "'..'" in doc["error"]
    status, doc = _raw(srv, "POST", "/v2/repository/models/add/versions/..%2F2", OCTET)
    assert status == 400
    assert not (repo.parent / "evil").exists() and not (repo.parent.parent / "evil").exists()


@pytest.mark.parametrize("version", ["0", "01", "-1", "x", "99999999999999999999"])
def test_bad_upload_versions_get_400(srv: RunningServer, version: str) -> None:
    answer = srv.post(
        f"/v2/repository/models/add/versions/{version}", data=_model_bytes(5), headers=OCTET
    )
    assert answer.status_code == 400 and "positive integer" in answer.json()["error"]


# -- upload, load, unload ----------------------------------------------------------------------


def test_upload_is_vetted_then_served_by_every_worker(srv: RunningServer, repo: Path) -> None:
    wrong_type = srv.post(
        "/v2/repository/models/add/versions/2",
        data=_model_bytes(2),
        headers={**ADMIN_HEADERS, "Content-Type": "application/json"},
    )
    assert wrong_type.status_code == 415
    garbage = srv.post("/v2/repository/models/add/versions/2", data=b"\x08junk", headers=OCTET)
    assert garbage.status_code == 400
    assert "model rejected: model file is not a valid ONNX model" in garbage.json()["error"]
    bomb = hostile.computed_shape_bomb().SerializeToString()
    refused = srv.post("/v2/repository/models/add/versions/2", data=bomb, headers=OCTET)
    assert refused.status_code == 400 and "ran out of memory" in refused.json()["error"]
    evil = hostile.point_external(hostile.add_weight_model(), "../1/model.onnx")
    refused = srv.post(
        "/v2/repository/models/add/versions/2", data=evil.SerializeToString(), headers=OCTET
    )
    assert refused.status_code == 400 and "contains '..'" in refused.json()["error"]
    assert sorted(p.name for p in (repo / "add").iterdir()) == ["1"]  # nothing half-made stays

    created = srv.post("/v2/repository/models/add/versions/2", data=_model_bytes(2), headers=OCTET)
    assert created.status_code == 201, created.text
    assert {"version": "2", "state": "READY", "reason": ""} in created.json()["versions"]
    _converged(srv, lambda r: r.json()["model_version"] == "2")
    assert _infer(srv, "add").json()["outputs"][0]["data"] == [2.0] * 4
    again = srv.post("/v2/repository/models/add/versions/2", data=_model_bytes(7), headers=OCTET)
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    assert _infer(srv, "add").json()["outputs"][0]["data"] == [2.0] * 4


def test_triton_style_load_with_files_unload_and_reload(srv: RunningServer, repo: Path) -> None:
    params = {
        "config": json.dumps({"max_batch_size": 8}),
        "file:3/model.onnx": base64.b64encode(_model_bytes(3)).decode(),
    }
    loaded = srv.post(
        "/v2/repository/models/add/load", json={"parameters": params}, headers=ADMIN_HEADERS
    )
    assert loaded.status_code == 200, loaded.text
    _converged(srv, lambda r: r.json()["model_version"] == "3")
    assert json.loads((repo / "add" / "config.json").read_text()) == {"max_batch_size": 8}

    bad = {"file:4/../../x.onnx": base64.b64encode(b"x").decode()}
    answer = srv.post(
        "/v2/repository/models/add/load", json={"parameters": bad}, headers=ADMIN_HEADERS
    )
    assert answer.status_code == 400 and "plain file name" in answer.json()["error"]
    answer = srv.post(
        "/v2/repository/models/add/load",
        json={"parameters": {"config": '{"max_batch_size": "8"}'}},
        headers=ADMIN_HEADERS,
    )
    assert answer.status_code == 400 and "max_batch_size" in answer.json()["error"]

    unloaded = srv.post("/v2/repository/models/add/unload", headers=ADMIN_HEADERS)
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "UNLOADED"
    _converged(srv, lambda r: r.status_code == 404)
    assert srv.post("/v2/repository/models/add/unload", headers=ADMIN_HEADERS).status_code == 404
    _replacement_worker_never_serves(srv, "add")
    missing = srv.post("/v2/repository/models/nothere/load", headers=ADMIN_HEADERS)
    assert missing.status_code == 404 and "not in the model repository" in missing.json()["error"]

    assert srv.post("/v2/repository/models/add/load", headers=ADMIN_HEADERS).status_code == 200
    _converged(srv, lambda r: r.status_code == 200 and r.json()["model_version"] == "3")


def _workers(srv: RunningServer) -> set[int]:
    pid = srv.process.pid  # the CLI execs Gunicorn: this is the master
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(c) for c in children}


def _replacement_worker_never_serves(srv: RunningServer, name: str) -> None:
    """SIGKILL a worker after `name` was unloaded: its replacement loads the repository at start
    but must not serve `name` (503 while it starts, then 404), never 200."""
    before = _workers(srv)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses.append(_infer(srv, name).status_code)
        replaced = sorted(_workers(srv) - before)
        refused = (
            replaced
            and f"[{replaced[0]}] [ERROR]" in srv.log()
            and (f"model {name!r} was unloaded through the admin API" in srv.log())
        )
        if refused and statuses[-16:] == [404] * 16:
            break
        time.sleep(0.02)
    assert 200 not in statuses, "a replacement worker served a model unloaded before it started"
    assert refused, srv.log()[-3000:]
    assert statuses[-16:] == [404] * 16, statuses[-40:]
    assert set(statuses) <= {404, 503}
