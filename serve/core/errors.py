"""The one error table: what can go wrong while serving, and what every front door answers.

Each failure has a `Code`, the server's own status vocabulary (Triton's approach: HTTP and gRPC
statuses are both derived from one internal code, never one from the other). `failure_for`
maps every exception a request can raise - protocol errors, lookups, the batcher, onnxruntime,
the admin plane's checks - to its code, message and response metadata. HTTP answers
`{"error": message}` (serve.protocol.v2.error_body) with `code.http`; gRPC aborts with
`code.grpc`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from serve.core.batcher import DeadlineExceeded, QueueFull
from serve.lifecycle.checks import ModelRejected
from serve.lifecycle.config import ConfigError
from serve.lifecycle.names import InvalidName
from serve.lifecycle.registry import ModelNotFound, ModelNotReady
from serve.lifecycle.runtime import InferenceError
from serve.protocol.types import ProtocolError

#: Seconds a client should wait before retrying a request refused for load or loading (503).
RETRY_AFTER_SECONDS = "1"


class Code(enum.Enum):
    """A failure's status, with the HTTP status and the gRPC status name derived from it."""

    INVALID_ARGUMENT = (400, "INVALID_ARGUMENT")
    UNAUTHENTICATED = (401, "UNAUTHENTICATED")
    PERMISSION_DENIED = (403, "PERMISSION_DENIED")
    NOT_FOUND = (404, "NOT_FOUND")
    METHOD_NOT_ALLOWED = (405, "UNIMPLEMENTED")
    ALREADY_EXISTS = (409, "ALREADY_EXISTS")
    TOO_LARGE = (413, "RESOURCE_EXHAUSTED")
    UNSUPPORTED_ENCODING = (415, "INVALID_ARGUMENT")
    INTERNAL = (500, "INTERNAL")
    UNIMPLEMENTED = (501, "UNIMPLEMENTED")
    UNAVAILABLE = (503, "UNAVAILABLE")
    DEADLINE_EXCEEDED = (504, "DEADLINE_EXCEEDED")

    def __init__(self, http: int, grpc: str) -> None:
        self.http = http
        self.grpc = grpc  # a grpc.StatusCode name (this layer does not import grpc)

    @classmethod
    def from_http(cls, status: int) -> Code:
        """The code whose HTTP status is `status` (protocol codecs raise HTTP numbers)."""
        return _BY_HTTP.get(status, cls.INTERNAL)


_BY_HTTP = {code.http: code for code in Code}


class ServeError(Exception):
    """A request refused by the server itself (token, admin plane, unsupported call)."""

    def __init__(self, code: Code, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers


@dataclass(frozen=True, slots=True)
class Failure:
    """What a front door answers for an error: a code, a message, response metadata."""

    code: Code
    message: str
    #: Response headers (HTTP) or trailing metadata (gRPC): Retry-After, WWW-Authenticate.
    headers: dict[str, str] | None = None

    @property
    def status(self) -> int:
        return self.code.http


_RETRY = {"Retry-After": RETRY_AFTER_SECONDS}


def failure_for(exc: BaseException) -> Failure:
    """The failure every front door answers for `exc` (protocols.md section 3; grpc.md 3).

    Anything not listed is a fault of the server: 500, and the caller logs the traceback
    (`is_unexpected`).
    """
    if isinstance(exc, ProtocolError):
        return Failure(Code.from_http(exc.status), exc.message)
    if isinstance(exc, ServeError):
        return Failure(exc.code, exc.message, exc.headers)
    if isinstance(exc, ModelNotFound):
        return Failure(Code.NOT_FOUND, str(exc))
    if isinstance(exc, ModelNotReady):
        return Failure(Code.UNAVAILABLE, str(exc), _RETRY if exc.loading else None)
    if isinstance(exc, QueueFull):
        return Failure(Code.UNAVAILABLE, str(exc), _RETRY)
    if isinstance(exc, DeadlineExceeded):
        return Failure(Code.DEADLINE_EXCEEDED, str(exc))
    if isinstance(exc, InferenceError):
        return Failure(Code.from_http(exc.status), str(exc))
    if isinstance(exc, (InvalidName, ConfigError)):
        return Failure(Code.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, ModelRejected):
        return Failure(Code.INVALID_ARGUMENT, f"model rejected: {exc.reason}")
    return Failure(Code.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")


_EXPECTED = (
    ProtocolError,
    ServeError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    DeadlineExceeded,
    InferenceError,
    InvalidName,
    ConfigError,
    ModelRejected,
)


def is_unexpected(exc: BaseException) -> bool:
    """True for a fault of the server (a 500 worth a traceback in the log)."""
    return not isinstance(exc, _EXPECTED)
