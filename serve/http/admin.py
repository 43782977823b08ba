"""The admin plane: model load, unload and upload, locked behind a bearer token.

Endpoints (the V2 model-repository extension, plus an upload):

    POST /v2/repository/models/{m}/load      explicit mode; optional Triton-style body
         {"parameters": {"config": "<config.json text>", "file:<v>/model.onnx": "<base64>"}}
    POST /v2/repository/models/{m}/unload    explicit mode
    POST /v2/repository/models/{m}/versions/{v}
         body: the raw ONNX file (Content-Type: application/octet-stream); poll or explicit mode

`POST /v2/repository/index` stays public and read-only (serve.http.views.v2). The admin endpoints
work only when an admin token is configured (`--admin-token-file` or TAPESERVE_ADMIN_TOKEN) and the
request carries `Authorization: Bearer <token>`: 401 without it, 403 when wrong (compared in
constant time, serve.core.auth). With no token configured they answer 403 saying the admin plane
is disabled. Names are validated (400) before anything touches the file system. An upload is
written into a hidden staging folder beside the model's versions, vetted there (static checks and
load probe), then renamed into place, so the repository never holds a partial or unvetted
version; an existing version is never overwritten (409). Errors are answered through the core's
one error table.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, request

from serve.core.auth import ADMIN_TOKEN_ENV, check_bearer
from serve.core.errors import Code, ServeError
from serve.http.views.common import error_response, json_response, read_body
from serve.lifecycle.config import CONFIG_FILE, PYTHON, parse_config
from serve.lifecycle.control import ModelController, vet_model
from serve.lifecycle.names import InvalidName, validate_model_name, validate_version
from serve.lifecycle.registry import State
from serve.lifecycle.repository import MODEL_FILE, MODEL_FILES
from serve.protocol.types import ProtocolError

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

bp = Blueprint("admin", __name__)
log = logging.getLogger("tapeserve.admin")


@dataclass(frozen=True)
class AdminState:
    """What the admin views need: the admin token (None = off), this worker's model controller."""

    admin_token: str | None
    controller: ModelController


def init_app(app: Flask, state: AdminState) -> None:
    """Register the admin endpoints."""
    app.extensions["tapeserve.admin"] = state
    app.register_blueprint(bp)


def _state() -> AdminState:
    return current_app.extensions["tapeserve.admin"]


def admin_only(view: Callable[..., Response]) -> Callable[..., Response]:
    """The token first, then the version and the request (400). A malformed model name in the
    URL was already refused, for everyone, by the name guard: that reveals nothing."""

    def wrapped(**kwargs: str) -> Response:
        token = _state().admin_token
        if token is None:
            raise ServeError(
                Code.PERMISSION_DENIED,
                "the admin plane is disabled: start tapeserve with --admin-token-file FILE "
                f"or {ADMIN_TOKEN_ENV} to enable model load, unload and upload",
            )
        check_bearer(request.headers.get("Authorization"), token, "admin API")
        validate_model_name(kwargs["name"])
        if "version" in kwargs:
            validate_version(kwargs["version"])
        return view(**kwargs)  # errors: the core's one table (serve.http.views.common.failure)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


def _require_mode(*modes: str) -> None:
    mode = _state().controller.settings.mode
    if mode not in modes:
        raise ProtocolError(
            400,
            f"model control mode is {mode!r}: this request needs --model-control-mode "
            f"{' or '.join(modes)}",
        )


@bp.post("/v2/repository/models/<name>/load")
@admin_only
def load(name: str) -> Response:
    """Load (or reload) a model; files in the body are vetted and written first."""
    _require_mode("explicit")
    files, config = _parse_load_body()
    _refuse_python_models(name, files, config)
    if config is not None:
        _write_config(name, config)
    for version, version_files in sorted(files.items()):
        _publish_version(name, version, version_files)
    return _model_answer(name, _state().controller.load(name), 200)


@bp.post("/v2/repository/models/<name>/unload")
@admin_only
def unload(name: str) -> Response:
    """Unload a model in every worker; queued requests finish first."""
    _require_mode("explicit")
    _state().controller.unload(name)
    return json_response({"name": name, "state": "UNLOADED"})


@bp.post("/v2/repository/models/<name>/versions/<version>")
@admin_only
def upload(name: str, version: str) -> Response:
    """Write a new version from the raw ONNX body, vetted before it enters the repository."""
    _require_mode("poll", "explicit")
    content_type = (request.mimetype or "").lower()
    if content_type != "application/octet-stream":
        raise ProtocolError(
            415,
            "upload the ONNX file as the raw body with Content-Type: application/octet-stream "
            f"(got {content_type or 'none'})",
        )
    body = read_body()
    if not body:
        raise ProtocolError(400, "the upload body is empty; send the ONNX file")
    number = validate_version(version)
    _publish_version(name, number, {MODEL_FILE: body})
    controller = _state().controller
    if controller.settings.mode == "explicit":
        return _model_answer(name, controller.load(name), 201)
    return json_response(
        {
            "name": name,
            "version": str(number),
            "state": "PENDING",
            "message": f"version {number} written; the repository poll loads it within about "
            f"{2 * controller.settings.poll_interval:g} s",
        },
        202,
    )


def _model_answer(name: str, model, status: int) -> Response:
    """The model's versions; 400 naming each version that failed to load."""
    rows = [
        {"version": str(mv.version), "state": mv.state.value, "reason": mv.reason}
        for mv in model.versions.values()
    ]
    failed = [mv for mv in model.versions.values() if mv.state is State.UNAVAILABLE]
    if model.error or failed:
        serving = [str(mv.version) for mv in model.versions.values() if mv.state is State.READY]
        problems = [model.error] if model.error else []
        problems += [f"version {mv.version}: {mv.reason}" for mv in failed]
        still = f"; version(s) {', '.join(serving)} keep serving" if serving else ""
        return error_response(400, f"failed to load model {name!r}: {'; '.join(problems)}{still}")
    return json_response({"name": name, "versions": rows}, status)


PYTHON_MODEL_FILE = MODEL_FILES[PYTHON]


def _refuse_python_models(name: str, files: dict[int, dict[str, bytes]], config: dict | None):
    """A Python model through the admin API is code sent to the server to run: refused (403)
    unless the server was started with --allow-python-models."""
    if _state().controller.registry.allow_python_models:
        return
    sends_code = any(PYTHON_MODEL_FILE in f for f in files.values())
    if sends_code or (config is not None and parse_config(config).kind == PYTHON):
        raise ProtocolError(
            403,
            f"model {name!r} is a Python model: its model.py would run as code in this server, "
            "which accepts Python models only when started with --allow-python-models",
        )


def _parse_load_body() -> tuple[dict[int, dict[str, bytes]], dict | None]:
    """Triton's load parameters: `config` (JSON text) and `file:<version>/<name>` (base64)."""
    body = read_body()
    if not body.strip():
        return {}, None
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(400, f"load request body is not valid JSON: {exc}") from None
    params = doc.get("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(params, dict):
        raise ProtocolError(400, 'load request body must be {"parameters": {...}}')
    config = None
    files: dict[int, dict[str, bytes]] = {}
    for key, value in params.items():
        if key == "config":
            if not isinstance(value, str):
                raise ProtocolError(400, "parameter 'config' must be config.json as a string")
            try:
                config = json.loads(value)
            except ValueError as exc:
                raise ProtocolError(400, f"parameter 'config' is not valid JSON: {exc}") from None
            parse_config(config)  # raises ConfigError (400) naming the bad key
        elif key.startswith("file:"):
            version, file_name = _file_key(key)
            if not isinstance(value, str):
                raise ProtocolError(400, f"parameter {key!r} must be base64 text")
            try:
                files.setdefault(version, {})[file_name] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(400, f"parameter {key!r} is not valid base64") from None
        else:
            raise ProtocolError(
                400, f"unknown load parameter {key!r}; expected 'config' or 'file:<version>/<name>'"
            )
    for version, version_files in files.items():
        if MODEL_FILE not in version_files and PYTHON_MODEL_FILE not in version_files:
            raise ProtocolError(
                400,
                f"files for version {version} must include {MODEL_FILE} (or a Python "
                f"model's {PYTHON_MODEL_FILE})",
            )
    return files, config


def _file_key(key: str) -> tuple[int, str]:
    """`file:3/model.onnx` -> (3, "model.onnx"); only flat, plain file names in a version."""
    rel = key[len("file:") :]
    parts = rel.split("/")
    if len(parts) != 2 or not _FILE_NAME.fullmatch(parts[1]) or ".." in parts[1]:
        raise ProtocolError(
            400,
            f"parameter {key!r}: files are named 'file:<version>/<file name>' with a plain file "
            "name (letters, digits, '_', '.', '-'; no folders, no '..')",
        )
    try:
        return validate_version(parts[0]), parts[1]
    except InvalidName as exc:
        raise ProtocolError(400, f"parameter {key!r}: {exc}") from None


def _publish_version(name: str, version: int, files: dict[str, bytes]) -> None:
    """Stage, vet, then rename into `<repo>/<name>/<version>`; never overwrite a version."""
    controller = _state().controller
    model_dir = controller.registry.repository / name
    target = model_dir / str(version)
    if target.exists():
        raise ProtocolError(
            409, f"version {version} of model {name!r} already exists; upload a new version"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=model_dir))
    try:
        for file_name, data in files.items():
            with open(staging / file_name, "xb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
        if MODEL_FILE in files:  # a Python model's code is not vetted: it is trusted or refused
            vet_model(staging / MODEL_FILE, controller.settings)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)  # atomic; fails if the version appeared meanwhile
        except OSError:
            raise ProtocolError(
                409, f"version {version} of model {name!r} already exists; upload a new version"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_config(name: str, config: dict) -> None:
    model_dir = _state().controller.registry.repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config-", dir=model_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(config, out, indent=2)
    os.replace(tmp, model_dir / CONFIG_FILE)


def init_model_control(app: Flask, controller: ModelController, admin_token: str | None) -> None:
    """The admin plane over this worker's model controller, wired into `app`."""
    if controller.settings.mode == "explicit" and admin_token is None:
        log.warning(
            "model control mode is explicit but no admin token is set: models loaded at "
            "start stay as they are until restart"
        )
    init_app(app, AdminState(admin_token, controller))
