"""`inference.GRPCInferenceService` (Triton's service, which tritonclient speaks) and the
standard health service, as thin adapters over the inference core.

Every RPC answers what the REST endpoint of the same name answers: the same core call, the same
error table (gRPC status from the failure's code, the same message), the same access-log record.
The credential is the `authorization` metadata (`Bearer <token>`): the inference token for
ModelInfer and ModelStreamInfer, the admin token for RepositoryModelLoad/Unload. Health and
metadata RPCs need none.

The handlers are plain functions run by the gRPC server's thread pool (serve/grpc/server.py): an
inference call runs its batch in its own thread when the model is idle and joins a batch when it
is not, as a gthread request does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serve.core import describe
from serve.core.admin import AdminPlane, load_parameters
from serve.core.errors import Code, Failure, ServeError, failure_for, is_unexpected
from serve.core.inference import Call, InferenceCore
from serve.grpc.codec import GRPC, parameter_value
from serve.grpc.generated import grpc_service_pb2 as pb
from serve.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from serve.grpc.generated import model_config_pb2 as mc
from serve.lifecycle.config import V2_TO_TRITON
from serve.lifecycle.registry import State
from serve.observability import accesslog

log = logging.getLogger("tapeserve.grpc")

SERVICE = "inference.GRPCInferenceService"
_PREFIX = f"/{SERVICE}/"
#: Our queue deadline falls this much before the client's, so a request still queued then is
#: answered DEADLINE_EXCEEDED by the core (and counted) rather than cut by gRPC's own timer.
_DEADLINE_MARGIN_S = 0.002
#: A deadline further away than this is no deadline (a year: clients without one send ~infinity).
_NO_DEADLINE_S = 365 * 86400.0
_STATUS = {code: grpc.StatusCode[code.grpc] for code in Code}


def _metadata(context: Any) -> dict[str, str]:
    return {item.key: item.value for item in context.invocation_metadata() or ()}


def _peer(context: Any) -> str | None:
    """The client's address from gRPC's peer string (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`)."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest.rsplit(":", 1)[0] if kind == "ipv4" else peer or None


def _write_log(
    context: Any, rid: str, path: str, model: str | None, version: str | None, status: int,
    started: float, fields: dict[str, Any],
) -> None:  # fmt: skip
    level = accesslog.level_for(path, status)
    if accesslog.log.isEnabledFor(level):
        accesslog.write(
            level, rid, "POST", path, model, version, status, started, _peer(context), fields
        )


def _abort(context: Any, failure: Failure, rid: str) -> None:
    """End the RPC with the failure's status and message (raises); metadata as trailers."""
    trailers = [("x-request-id", rid)]
    trailers += [(k.lower(), v) for k, v in (failure.headers or {}).items()]
    context.set_trailing_metadata(tuple(trailers))
    context.abort(_STATUS[failure.code], failure.message)


def _rpc(handler: Callable[..., Any]) -> Callable[..., Any]:
    """Access log, error table and request id around a unary RPC other than ModelInfer.

    The handler gets the request, the metadata and a dict of access-log fields it may fill
    (model, version)."""
    path = _PREFIX + handler.__name__

    def rpc(self: InferenceServicer, request: Any, context: Any) -> Any:
        started = time.perf_counter()
        metadata = _metadata(context)
        rid = accesslog.request_id_from(metadata.get("x-request-id"))
        fields: dict[str, Any] = {}
        try:
            answer = handler(self, request, metadata, fields)
        except Exception as exc:
            if is_unexpected(exc):
                log.exception("unexpected error while serving %s", path)
            failure = failure_for(exc)
            fields["grpc_status"] = failure.code.grpc
            _write_log(context, rid, path, fields.pop("model", None),
                       fields.pop("version", None), failure.status, started, fields)  # fmt: skip
            _abort(context, failure, rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        fields["grpc_status"] = "OK"
        _write_log(context, rid, path, fields.pop("model", None), fields.pop("version", None),
                   200, started, fields)  # fmt: skip
        return answer

    rpc.__name__ = handler.__name__
    rpc.__doc__ = handler.__doc__
    return rpc


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 / Triton gRPC inference service over one worker's core and admin plane."""

    def __init__(self, core: InferenceCore, admin: AdminPlane) -> None:
        self.core = core
        self.admin = admin

    # -- health and metadata -------------------------------------------------------------------

    @_rpc
    def ServerLive(self, request, metadata, fields):  # noqa: N802 (the RPC's name)
        return pb.ServerLiveResponse(live=True)

    @_rpc
    def ServerReady(self, request, metadata, fields):  # noqa: N802
        return pb.ServerReadyResponse(ready=self.core.ready())

    @_rpc
    def ModelReady(self, request, metadata, fields):  # noqa: N802
        fields["model"] = request.name
        ready = describe.model_ready(self.core, request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    def ServerMetadata(self, request, metadata, fields):  # noqa: N802
        doc = describe.server_metadata()
        return pb.ServerMetadataResponse(
            name=doc["name"], version=doc["version"], extensions=doc["extensions"]
        )

    @_rpc
    def ModelMetadata(self, request, metadata, fields):  # noqa: N802
        fields["model"] = request.name
        doc = describe.model_metadata(self.core, request.name, request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[tensor(**t) for t in doc["inputs"]],
            outputs=[tensor(**t) for t in doc["outputs"]],
        )

    @_rpc
    def ModelConfig(self, request, metadata, fields):  # noqa: N802
        fields["model"] = request.name
        doc = describe.model_config(self.core, request.name, request.version or None)
        return pb.ModelConfigResponse(config=model_config_message(doc))

    @_rpc
    def ModelStatistics(self, request, metadata, fields):  # noqa: N802
        fields["model"] = request.name or None
        rows = describe.model_stats(self.core, request.name or None, request.version or None)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(row) for row in rows])

    @_rpc
    def RepositoryIndex(self, request, metadata, fields):  # noqa: N802
        index = pb.RepositoryIndexResponse.ModelIndex
        rows = describe.repository_index(self.core, request.ready)
        return pb.RepositoryIndexResponse(models=[index(**row) for row in rows])

    # -- the admin plane -----------------------------------------------------------------------

    @_rpc
    def RepositoryModelLoad(self, request, metadata, fields):  # noqa: N802
        name = fields["model"] = request.model_name
        self.admin.authorize(metadata.get("authorization"), name)
        config, files = None, {}
        for key, parameter in request.parameters.items():
            value = parameter_value(parameter)
            if key == "config" and isinstance(value, str):
                config = value
            elif key.startswith("file:") and isinstance(value, bytes):
                files[key] = value
            else:
                raise ServeError(
                    Code.INVALID_ARGUMENT,
                    f"load parameter {key!r}: expected 'config' (string_param, config.json) or "
                    "'file:<version>/<name>' (bytes_param)",
                )
        loaded_files, parsed = load_parameters(config, files)
        self.admin.load(name, loaded_files, parsed)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    def RepositoryModelUnload(self, request, metadata, fields):  # noqa: N802
        name = fields["model"] = request.model_name
        self.admin.authorize(metadata.get("authorization"), name)
        self.admin.unload(name)
        return pb.RepositoryModelUnloadResponse()

    # -- inference -----------------------------------------------------------------------------

    def _infer(self, request: pb.ModelInferRequest, context: Any, metadata: dict) -> Call:
        remaining = context.time_remaining()
        deadline = None
        if remaining is not None and remaining < _NO_DEADLINE_S:  # clients without one send ~inf
            deadline = time.monotonic() + max(0.0, remaining - _DEADLINE_MARGIN_S)
        return self.core.serve(
            GRPC,
            request.model_name,
            request.model_version or None,
            lambda: request,
            credential=metadata.get("authorization"),
            where=_PREFIX + "ModelInfer",
            deadline=deadline,
        )

    def ModelInfer(self, request, context):  # noqa: N802
        started = time.perf_counter()
        metadata = _metadata(context)
        rid = accesslog.request_id_from(metadata.get("x-request-id"))
        call = self._infer(request, context, metadata)
        fields = call.record()
        failure = call.failure
        fields["grpc_status"] = "OK" if failure is None else failure.code.grpc
        _write_log(context, rid, _PREFIX + "ModelInfer", request.model_name,
                   request.model_version or None, call.status, started, fields)  # fmt: skip
        if failure is not None:
            _abort(context, failure, rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        return call.body

    def ModelStreamInfer(  # noqa: N802
        self, request_iterator: Iterator[pb.ModelInferRequest], context: Any
    ) -> Iterator[pb.ModelStreamInferResponse]:
        """Requests answered in order on one stream (which holds one thread of the pool while
        it is open). An error answers that request in `error_message` and the stream goes on,
        as Triton does; with the metadata `triton_grpc_error: true` it ends the stream with the
        error's status instead."""
        metadata = _metadata(context)
        strict = metadata.get("triton_grpc_error", "").lower() == "true"
        path = _PREFIX + "ModelStreamInfer"
        for request in request_iterator:
            started = time.perf_counter()
            rid = accesslog.request_id_from(metadata.get("x-request-id"))
            call = self._infer(request, context, metadata)
            fields = call.record()
            failure = call.failure
            fields["grpc_status"] = "OK" if failure is None else failure.code.grpc
            _write_log(context, rid, path, request.model_name, request.model_version or None,
                       call.status, started, fields)  # fmt: skip
            if failure is None:
                yield pb.ModelStreamInferResponse(infer_response=call.body)
            elif strict:
                _abort(context, failure, rid)
            else:
                answer = pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                )
                yield pb.ModelStreamInferResponse(
                    error_message=failure.message, infer_response=answer
                )

    # -- what this server does not have ------------------------------------------------------

    def _unsupported(self, context: Any, feature: str) -> None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by this server")

    def SystemSharedMemoryStatus(self, request, context):  # noqa: N802
        self._unsupported(context, "system shared memory")

    def SystemSharedMemoryRegister(self, request, context):  # noqa: N802
        self._unsupported(context, "system shared memory")

    def SystemSharedMemoryUnregister(self, request, context):  # noqa: N802
        self._unsupported(context, "system shared memory")

    def CudaSharedMemoryStatus(self, request, context):  # noqa: N802
        self._unsupported(context, "CUDA shared memory")

    def CudaSharedMemoryRegister(self, request, context):  # noqa: N802
        self._unsupported(context, "CUDA shared memory")

    def CudaSharedMemoryUnregister(self, request, context):  # noqa: N802
        self._unsupported(context, "CUDA shared memory")

    def TraceSetting(self, request, context):  # noqa: N802
        self._unsupported(context, "tracing")

    def LogSettings(self, request, context):  # noqa: N802
        self._unsupported(context, "log settings over gRPC")


def model_config_message(doc: dict[str, Any]) -> mc.ModelConfig:
    """The effective configuration (serve.core.describe.model_config) as Triton's ModelConfig:
    tensor dims without the batch dimension when the model batches, as Triton writes them;
    provider, device, state and reason in `parameters`."""
    batch = doc["max_batch_size"]
    config = mc.ModelConfig(
        name=doc["name"], platform=doc["platform"], backend=doc["backend"], max_batch_size=batch
    )
    for key, target in (("input", config.input), ("output", config.output)):
        for tensor in doc[key]:
            dims = tensor["shape"][1:] if batch > 0 and tensor["shape"] else tensor["shape"]
            target.add(
                name=tensor["name"],
                data_type=mc.DataType.Value(V2_TO_TRITON[tensor["datatype"]]),
                dims=dims,
            )
    dynamic = doc["dynamic_batching"]
    if dynamic is not None:
        policy = dynamic["default_queue_policy"]
        config.dynamic_batching.max_queue_delay_microseconds = dynamic[
            "max_queue_delay_microseconds"
        ]
        config.dynamic_batching.default_queue_policy.max_queue_size = policy["max_queue_size"]
        config.dynamic_batching.default_queue_policy.default_timeout_microseconds = policy[
            "default_timeout_microseconds"
        ]
    for group in doc["instance_group"]:
        config.instance_group.add(
            count=group["count"], kind=mc.ModelInstanceGroup.Kind.Value(group["kind"])
        )
    ((kind, arg),) = doc["version_policy"].items()
    if kind == "latest":
        config.version_policy.latest.num_versions = arg
    elif kind == "all":
        config.version_policy.all.SetInParent()
    else:
        config.version_policy.specific.versions.extend(arg)
    for key in ("provider", "device", "state", "reason"):
        if doc.get(key):
            config.parameters[key].string_value = str(doc[key])
    return config


def _statistics(row: dict[str, Any]) -> pb.ModelStatistics:
    stats = row["inference_stats"]
    duration = pb.StatisticDuration
    return pb.ModelStatistics(
        name=row["name"],
        version=row["version"],
        last_inference=row["last_inference"],
        inference_count=row["inference_count"],
        execution_count=row["execution_count"],
        inference_stats=pb.InferStatistics(
            **{key: duration(**value) for key, value in stats.items()}
        ),
    )


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 for Kubernetes gRPC probes and load balancers.

    Services: "" and "readiness" (and the inference service's name) - the server's readiness,
    NOT_SERVING while models load and from the moment a drain starts; "liveness" - SERVING while
    the process answers; a model's name - whether that model can answer. Others: NOT_FOUND.
    No credential is needed (probes cannot send one).
    """

    WATCH_INTERVAL_S = 1.0

    def __init__(self, core: InferenceCore) -> None:
        self.core = core

    def status(self, service: str) -> int | None:
        serving, not_serving = (
            health_pb2.HealthCheckResponse.SERVING,
            (health_pb2.HealthCheckResponse.NOT_SERVING),
        )
        if service in ("", "readiness", SERVICE):
            return serving if self.core.ready() else not_serving
        if service == "liveness":
            return serving
        model = self.core.registry.models.get(service)
        if model is None:
            return None
        ok = self.core.ready() and any(v.state is State.READY for v in model.versions.values())
        return serving if ok else not_serving

    def Check(self, request, context):  # noqa: N802
        status = self.status(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context):  # noqa: N802
        """Holds a thread of the pool while it is open (Kubernetes probes use Check)."""
        last = None
        while context.is_active():
            status = self.status(request.service)
            if status is None:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            time.sleep(self.WATCH_INTERVAL_S)
