"""The gRPC server of one worker, every worker on the one port (SO_REUSEPORT: the kernel spreads
connections over the workers).

gRPC's C core does the HTTP/2 work in threads of its own; the handlers run in a pool of
`--threads` threads and call the inference core as a gthread request does (an idle model runs
the call in its thread, a busy one batches it). Measured against grpc.aio on the worker's uvloop
event loop (benchmarks/grpc_designs.py, docs/performance.md), the pool answers a lone call a
little sooner (no hand-off from the C core's poller to the loop, and none from the loop to a
batch runner), serves as many calls at 64 connections within the noise, for less CPU per call;
and both worker classes run it alike.

gRPC objects are created only here, in the worker, after the fork (a gRPC server does not
survive a fork). On SIGTERM `stop(grace)` refuses new calls (UNAVAILABLE), lets the calls in
flight finish within `grace`, and the health service answers NOT_SERVING from the moment the
drain starts.
"""

from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serve.core.admin import AdminPlane
from serve.core.inference import InferenceCore
from serve.grpc.generated import grpc_service_pb2 as pb
from serve.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from serve.grpc.servicer import SERVICE, HealthServicer, InferenceServicer

log = logging.getLogger("tapeserve.grpc")


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    """`inference.GRPCInferenceService`, grpc.health.v1 and reflection on `host:port`."""

    def __init__(
        self, core: InferenceCore, admin: AdminPlane, host: str, port: int, threads: int
    ) -> None:
        self.core, self.admin = core, admin
        self.host, self.port, self.threads = host, port, threads
        self._server: grpc.Server | None = None
        self._stopped: threading.Event | None = None

    def start(self) -> None:
        """Bind and serve. Raises RuntimeError when the port cannot be bound."""
        limit = self.core.max_body_size  # --max-body-size is the largest request message
        server = grpc.server(
            futures.ThreadPoolExecutor(self.threads, thread_name_prefix="grpc"),
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self.core, self.admin), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(self.core), server)
        reflection.enable_server_reflection(
            (
                pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        try:
            bound = server.add_insecure_port(address(self.host, self.port))
        except RuntimeError as exc:
            raise RuntimeError(f"cannot bind {address(self.host, self.port)}: {exc}") from None
        if not bound:
            raise RuntimeError(f"cannot bind {address(self.host, self.port)}")
        server.start()
        self._server = server
        log.info("gRPC (%s) on %s, %d threads", SERVICE, address(self.host, bound), self.threads)

    def begin_stop(self, grace: float) -> None:
        """Refuse new calls now; those in flight may finish within `grace` seconds. Does not
        wait (callable from a signal handler); `wait_stopped` does."""
        if self._server is not None and self._stopped is None:
            self._stopped = self._server.stop(grace)

    def wait_stopped(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the drain begun by `begin_stop`; True once done."""
        return self._stopped is None or self._stopped.wait(max(0.0, timeout))
