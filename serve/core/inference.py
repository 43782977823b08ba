"""The inference core: everything a request does once a front door has it in hand.

Every front door - the Flask views, the event-loop fast path, gRPC - is a thin adapter around
`InferenceCore.serve` / `serve_async`: it hands over the model name and version, a way to read
the request and a `Codec` for its protocol, and renders the finished `Call` (an answer, or a
`Failure` from the one error table) in its transport. In between, the same steps for all:

    token -> model name -> hold the version -> read -> decode + validate -> deadline
          -> executor (the batcher) -> outputs -> encode -> metrics, access-log record

In-process callers (an ensemble step, a Python model's BLS request) use `infer` / `infer_async`:
arrays in, arrays out, the same lookup, validation, deadline, executor and outputs, no codec.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from serve.core import health
from serve.core.auth import check_bearer
from serve.core.errors import Failure, ServeError, failure_for, is_unexpected
from serve.lifecycle.names import validate_model_name
from serve.lifecycle.registry import ModelNotReady, ModelRegistry, ModelVersion
from serve.observability import metrics
from serve.pipelines.classification import classify
from serve.protocol.datatypes import datatype_of
from serve.protocol.types import InferInput, InferRequest, ProtocolError, RequestedOutput
from serve.protocol.validate import check_timeout, validate_request
from serve.settings import Settings

log = logging.getLogger("tapeserve.core")

#: Metrics label of requests made in-process (ensemble steps, BLS).
IN_PROCESS = "inprocess"

#: Request parameters the server acts on itself (Triton's reserved names): a model's
#: `request.parameters()` never shows them, and an ensemble does not forward them to its steps
#: (the deadline travels on its own).
RESERVED_PARAMETERS = frozenset(
    {"timeout", "binary_data_output", "priority", "sequence_id", "sequence_start", "sequence_end",
     "headers"}
)  # fmt: skip


def model_parameters(parameters: dict) -> dict | None:
    """The request's own parameters, as its model gets them (None when there are none)."""
    if not parameters:
        return None
    own = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}
    return own or None


@dataclass(slots=True)
class Request:
    """A decoded request, ready to run: what a codec's `decode` returns."""

    feeds: dict[str, np.ndarray]
    #: The outputs asked for; None means every output, in signature order.
    outputs: list[RequestedOutput] | None = None
    #: Request parameters; `timeout` (microseconds) bounds the time in the queue.
    parameters: dict = field(default_factory=dict)
    id: str | None = None
    #: What the codec needs again to encode the answer (e.g. the decoded V2 request).
    state: Any = None


#: One output of an answer: its name, its data and how it was asked for (None: not named).
Output = tuple[str, np.ndarray, RequestedOutput | None]


class Codec(Protocol):
    """A protocol's decoder and encoder of inference requests (serve/http/codecs.py, gRPC)."""

    #: The `protocol` label of the request metrics.
    protocol: str

    def decode(self, mv: ModelVersion, payload: Any) -> Request:
        """Decode and validate `payload` for `mv`; raise ProtocolError (or any error of the
        error table) when it does not fit."""
        ...

    def encode(
        self, mv: ModelVersion, request: Request, outputs: list[Output], payload: Any
    ) -> tuple[Any, dict[str, str]]:
        """The answer's body and headers (HTTP) or message (gRPC)."""
        ...


#: The labelled children of the request metrics, looked up once per label set (bounded: models x
#: versions x protocols x status codes).
_request_counter = functools.lru_cache(maxsize=4096)(metrics.REQUESTS.labels)
_request_duration = functools.lru_cache(maxsize=1024)(metrics.REQUEST_DURATION.labels)

#: Model names already found valid (the few a deployment serves, asked again and again), bounded.
_GOOD_NAMES_KEPT = 4096


class Call:
    """One front-door request through the core; once finished, its answer and its record.

    `status` is 200 with `body` and `headers` from the codec, or the failure's HTTP status with
    `failure` set. `model`, `version` (the metric labels) and `batch_size` are what the access
    log records.
    """

    __slots__ = (
        "core", "codec", "where", "started", "mv", "request", "deadline", "status", "body",
        "headers", "failure", "error", "model", "version", "batch_size", "counted",
    )  # fmt: skip

    def __init__(self, core: InferenceCore, codec: Codec, where: str) -> None:
        self.core, self.codec, self.where = core, codec, where
        self.started = time.perf_counter()
        self.mv: ModelVersion | None = None
        self.request: Request | None = None
        self.deadline: float | None = None
        self.status = 0
        self.body: Any = None
        self.headers: dict[str, str] | None = None
        self.failure: Failure | None = None
        self.error: BaseException | None = None
        self.model = ""
        self.version = ""
        self.batch_size: int | None = None
        self.counted = False

    def record(self) -> dict[str, object]:
        """What the access log records that only the core knows: the version that answered
        and the rows the request added to its batch."""
        fields: dict[str, object] = {}
        if self.mv is not None:
            fields["model"], fields["version"] = self.model, self.version
        if self.batch_size is not None:
            fields["batch_size"] = self.batch_size
        return fields

    # -- the steps, in order -----------------------------------------------------------------

    def admit(self, credential: str | None, in_process: bool) -> bool:
        """The inference token, when one is set (a refusal is not counted as a request).

        In-process requests come from a request that was admitted already, and are not in
        flight on their own."""
        if not in_process:
            token = self.core.inference_token
            if token is not None:
                try:
                    check_bearer(credential, token, "inference API")
                except ServeError as exc:
                    self.fail(exc)
                    return False
            metrics.INFLIGHT_REQUESTS.inc()
        self.counted = True
        return True

    def hold(self, name: str, version: str | None) -> None:
        if name in self.core.registry.models:
            self.model = name
        self.mv = self.core.hold(name, version)

    def decode(self, payload: Any, deadline: float | None) -> None:
        mv = self.mv
        request = self.request = self.codec.decode(mv, payload)  # type: ignore[arg-type]
        self.deadline = self.core.deadline(mv, request.parameters.get("timeout"), deadline)  # type: ignore[arg-type]
        self.batch_size = batch_rows(mv, request.feeds)  # type: ignore[arg-type]

    def encode(self, results: Sequence[np.ndarray], payload: Any) -> None:
        mv, request = self.mv, self.request
        outputs = self.core.outputs(mv, request, results)  # type: ignore[arg-type]
        self.body, self.headers = self.codec.encode(mv, request, outputs, payload)  # type: ignore[arg-type]
        self.status = 200

    def fail(self, exc: BaseException) -> None:
        if is_unexpected(exc):
            log.exception("unexpected error while serving %s", self.where)
        self.error = exc
        self.failure = failure_for(exc)
        self.status = self.failure.status

    def end(self) -> None:
        """Let go of the version, count the request (also when its task is cancelled)."""
        mv = self.mv
        if mv is not None:
            mv.release()  # a swap or unload waiting for this version may go on
            self.version = str(mv.version)
            self.model = mv.name
        if not self.counted:
            return
        if self.codec.protocol != IN_PROCESS:
            metrics.INFLIGHT_REQUESTS.dec()
        if self.status:
            count_request(
                self.model,
                self.version,
                self.codec.protocol,
                self.status,
                self.started,
                mv is not None,
            )


class InferenceCore:
    """One worker's inference core over its model registry (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        inference_token: str | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        #: The largest request body or message a front door accepts (bytes).
        self.max_body_size = settings.max_body_size
        self.inference_token = inference_token
        self._good_names: set[str] = set()

    # -- health --------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Readiness: every model reached a final state in every worker (none failed, when
        strict), and this worker is not draining."""
        return not health.draining() and self.registry.ready(strict=self.settings.strict_readiness)

    # -- model lookup --------------------------------------------------------------------------

    def check_name(self, name: str) -> None:
        """400 (InvalidName) unless `name` follows the model-name rule."""
        if name not in self._good_names:
            validate_model_name(name)
            if len(self._good_names) < _GOOD_NAMES_KEPT:
                self._good_names.add(name)

    def version(self, name: str, version: str | None = None) -> ModelVersion:
        """The version asked for (or the one the policy serves); raises the 400/404/503."""
        self.check_name(name)
        return self.registry.version(name, version)

    def hold(self, name: str, version: str | None = None) -> ModelVersion:
        """`version`, held until `release()`: a swap or unload waits for its holders."""
        self.check_name(name)
        return hold_version(self.registry, name, version)

    # -- the steps every request shares --------------------------------------------------------

    def deadline(
        self, mv: ModelVersion, timeout_us: Any, transport: float | None = None
    ) -> float | None:
        """Monotonic deadline: the sooner of the request's `timeout` parameter (microseconds;
        else the model's default_timeout_ms) and the transport's deadline (gRPC)."""
        deadline = None
        if check_timeout(timeout_us):
            deadline = time.monotonic() + timeout_us / 1e6
        if deadline is None and mv.config.default_timeout_ms > 0:
            deadline = time.monotonic() + mv.config.default_timeout_ms / 1000.0
        if transport is not None and (deadline is None or transport < deadline):
            return transport
        return deadline

    def outputs(
        self, mv: ModelVersion, request: Request, results: Sequence[np.ndarray]
    ) -> list[Output]:
        """The outputs the request asked for (all, by default), in the order it asked, each as
        asked (e.g. its top K classes). Every answer's outputs are chosen and post-processed
        here, whatever the protocol."""
        if request.outputs is None:
            return [(s.name, arr, None) for s, arr in zip(mv.outputs, results, strict=True)]
        index = {s.name: i for i, s in enumerate(mv.outputs)}
        return [(o.name, _as_asked(mv, o, results[index[o.name]]), o) for o in request.outputs]

    # -- front doors ---------------------------------------------------------------------------

    def serve(
        self,
        codec: Codec,
        name: str,
        version: str | None,
        read: Callable[[], Any],
        *,
        credential: str | None = None,
        where: str = "",
        deadline: float | None = None,
    ) -> Call:
        """One request from a thread: `read()` gives the payload for `codec` (called once the
        version is held). Never raises; the returned call holds the answer or the failure."""
        call = Call(self, codec, where)
        if not call.admit(credential, codec is _IN_PROCESS_CODEC):
            return call
        try:
            call.hold(name, version)
            payload = read()
            call.decode(payload, deadline)
            request = call.request
            results = call.mv.batcher.infer(  # type: ignore[union-attr]
                request.feeds, call.deadline, model_parameters(request.parameters)
            )
            call.encode(results, payload)
        except Exception as exc:
            call.fail(exc)
        finally:
            call.end()
        return call

    async def serve_async(
        self,
        codec: Codec,
        name: str,
        version: str | None,
        read: Callable[[], Awaitable[Any]],
        *,
        credential: str | None = None,
        where: str = "",
        deadline: float | None = None,
    ) -> Call:
        """`serve` for an event loop: `read()` is awaited, and so is the executor."""
        call = Call(self, codec, where)
        if not call.admit(credential, codec is _IN_PROCESS_CODEC):
            return call
        try:
            call.hold(name, version)
            payload = await read()
            call.decode(payload, deadline)
            request = call.request
            results = await call.mv.batcher.infer_async(  # type: ignore[union-attr]
                request.feeds, call.deadline, model_parameters(request.parameters)
            )
            call.encode(results, payload)
        except Exception as exc:
            call.fail(exc)
        finally:  # also when the task is cancelled (a client gone, a worker stopping at once)
            call.end()
        return call

    # -- in-process ----------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        *,
        version: str | None = None,
        outputs: Sequence[str | RequestedOutput] | None = None,
        parameters: dict | None = None,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Run `model` on `inputs` in this process (an ensemble step, a BLS request) and return
        the outputs asked for (all by default) by name.

        The same lookup, validation, deadline, executor, outputs and metrics (protocol label
        `inprocess`) as a front door's request; no token (the request that makes this one was
        admitted). Raises what the error table maps (serve.core.errors.failure_for):
        ProtocolError for inputs that do not fit, ModelNotFound, QueueFull, ...
        """
        payload = (inputs, outputs, parameters)
        call = self.serve(
            _IN_PROCESS_CODEC, model, version, lambda: payload, where=model, deadline=deadline
        )
        if call.error is not None:
            raise call.error
        return call.body

    async def infer_async(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        *,
        version: str | None = None,
        outputs: Sequence[str | RequestedOutput] | None = None,
        parameters: dict | None = None,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray]:
        """`infer` for an event loop."""
        payload = (inputs, outputs, parameters)

        async def read() -> tuple:
            return payload

        call = await self.serve_async(
            _IN_PROCESS_CODEC, model, version, read, where=model, deadline=deadline
        )
        if call.error is not None:
            raise call.error
        return call.body


def _as_asked(mv: ModelVersion, asked: RequestedOutput, result: np.ndarray) -> np.ndarray:
    """An output as the request asked for it: its top K classes when it set `classification`
    (the classification extension, serve/pipelines/classification.py)."""
    if not asked.classification:
        return result
    return classify(result, asked.classification, mv.labels.get(asked.name), mv.max_batch_size > 0)


def batch_rows(mv: ModelVersion, feeds: dict[str, np.ndarray]) -> int:
    """Rows a request adds to a batch (1 for models that do not batch), for the access log."""
    return next(iter(feeds.values())).shape[0] if mv.batching and feeds else 1


def hold_version(registry: ModelRegistry, name: str, version: str | None) -> ModelVersion:
    """Look a version up and hold it (a request from any front door, an ensemble step, a BLS
    call); refusals for a model that is loading or unavailable are counted."""
    try:
        mv = registry.version(name, version)
        while not mv.hold():  # swapped out since the lookup (model control): look again
            mv = registry.version(name, version)
    except ModelNotReady as exc:
        reason = "loading" if exc.loading else "unavailable"
        metrics.REJECTED_REQUESTS.labels(name, reason).inc()
        raise
    return mv


def check_inputs(
    mv: ModelVersion,
    feeds: dict[str, np.ndarray],
    outputs: Sequence[RequestedOutput] | None = None,
) -> None:
    """The checks a front door's codec makes, for arrays made in-process: names, datatypes,
    shapes, the batch limit, the outputs asked for (400 naming what does not fit)."""
    items = []
    for name, arr in feeds.items():
        try:
            datatype = datatype_of(arr.dtype)
        except ValueError as exc:
            raise ProtocolError(400, f"input '{name}': {exc}") from None
        items.append(InferInput(name, datatype, tuple(arr.shape), arr))
    req = InferRequest(None, items, list(outputs) if outputs else None, False)
    validate_request(req, mv.inputs, mv.outputs, mv.max_batch_size)


def count_request(
    model: str, version: str, protocol: str, status: int, started: float, timed: bool = True
) -> None:
    """Count an answered request under its labels (and, when `timed`, its duration since
    `started`, a perf_counter() value): every front door and in-process caller counts here."""
    _request_counter(model, version, protocol, str(status)).inc()
    if timed:
        _request_duration(model, version, protocol).observe(time.perf_counter() - started)


class _InProcessCodec:
    """Arrays in, arrays out: the 'protocol' of requests made inside the server."""

    protocol = IN_PROCESS

    def decode(self, mv: ModelVersion, payload: Any) -> Request:
        inputs, outputs, parameters = payload
        feeds = {name: np.asarray(data) for name, data in inputs.items()}
        wanted = None
        if outputs:
            wanted = [
                o if isinstance(o, RequestedOutput) else RequestedOutput(o, False) for o in outputs
            ]
        check_inputs(mv, feeds, wanted)
        return Request(feeds, wanted, dict(parameters or {}))

    def encode(
        self, mv: ModelVersion, request: Request, outputs: list[Output], payload: Any
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        return {name: arr for name, arr, _ in outputs}, {}


_IN_PROCESS_CODEC = _InProcessCodec()
