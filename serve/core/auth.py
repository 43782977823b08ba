"""Bearer tokens: the inference token and the admin token, checked alike by every front door.

HTTP carries the credential in the `Authorization` header, gRPC in the `authorization`
metadata; both hand its value to `check_bearer`. A missing credential is UNAUTHENTICATED (401),
a wrong one PERMISSION_DENIED (403), compared in constant time.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from serve.core.errors import Code, ServeError

ADMIN_TOKEN_ENV = "TAPESERVE_ADMIN_TOKEN"
INFERENCE_TOKEN_ENV = "TAPESERVE_INFERENCE_TOKEN"


def read_token(path: str | None, env_var: str, environ: dict[str, str] | None = None) -> str | None:
    """The token from `path` (whitespace stripped) or else from `env_var`; None when neither.

    An empty token file or variable is an error: it would otherwise silently turn auth off.
    """
    environ = os.environ if environ is None else environ
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read token file {path!r}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"token file {path!r} is empty")
        return token
    if env_var in environ:
        token = environ[env_var].strip()
        if not token:
            raise ValueError(f"{env_var} is set but empty")
        return token
    return None


def check_bearer(authorization: str | None, expected: str, realm: str) -> None:
    """Pass when `authorization` is `Bearer <expected>`; else raise the 401 or 403."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ServeError(
            Code.UNAUTHENTICATED,
            f"{realm} requires a token: send 'Authorization: Bearer <token>'",
            {"WWW-Authenticate": f'Bearer realm="tapeserve-{realm.split()[0]}"'},
        )
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        raise ServeError(Code.PERMISSION_DENIED, f"the {realm} token is not valid")
