"""Every URL that carries a model name is checked before routing decides anything.

Flask runs `before_request` hooks before it raises routing errors, so this one sees requests for
every path under the model prefixes, including ones no route matches (a name holding `/`, once
URL-decoded, never reaches a `<name>` route). A bad name or a `.`/`..` path segment becomes a 400
with the reason, instead of a 404 or, worse, a path someone might join onto the repository.
"""

from __future__ import annotations

from flask import Flask, request

from serve.http.routes import MODEL_PREFIXES
from serve.lifecycle.names import InvalidName, validate_model_name
from serve.protocol.types import ProtocolError


def check_model_path(path: str) -> None:
    """Raise ProtocolError(400) when `path` names a model badly or holds `.`/`..` segments."""
    if path in _GOOD_PATHS:
        return
    _check(path)
    if len(_GOOD_PATHS) < _GOOD_PATHS_KEPT:
        _GOOD_PATHS.add(path)


#: Paths already found good (the few a deployment serves, asked again and again), bounded.
_GOOD_PATHS: set[str] = set()
_GOOD_PATHS_KEPT = 4096


def _check(path: str) -> None:
    for prefix in MODEL_PREFIXES:
        if path.startswith(prefix):
            break
    else:
        return
    rest = path[len(prefix) :]
    segments = rest.split("/")
    name = segments[0]
    if prefix == "/v1/models/" and len(segments) == 1:
        name = name.split(":", 1)[0]  # TF Serving's `name:predict`
    try:
        validate_model_name(name)
    except InvalidName as exc:
        raise ProtocolError(400, str(exc)) from None
    if any(s.split(":", 1)[0] in (".", "..") for s in segments[1:]):  # also `..:predict`
        raise ProtocolError(
            400, f"path {path!r} contains a '.' or '..' segment; model URLs take plain names only"
        )


def init_app(app: Flask) -> None:
    """Check the model name of every request under the model URL prefixes (400 when bad)."""

    @app.before_request
    def _check_model_name() -> None:
        check_model_path(request.path)
