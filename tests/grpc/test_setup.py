"""What the gRPC front door is built from and how it starts: the committed stubs are what the
generator writes from the committed protos, which are Triton's; the port is checked by the
master; --grpc-port 0 turns gRPC off."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.service_pb2 as triton_service

from serve.core.errors import Code
from serve.grpc import generate
from serve.grpc.generated import grpc_service_pb2, model_config_pb2
from tests.hardening.load import wait_for
from tests.support.server import free_port, start_server


def test_committed_stubs_are_what_the_generator_writes(tmp_path: Path) -> None:
    for path in generate.generate(tmp_path):
        committed = generate.HERE / "generated" / path.name
        assert path.read_text() == committed.read_text(), (
            f"{committed} is stale: run `python -m serve.grpc.generate`"
        )


def test_descriptors_are_tritonclients_byte_for_byte() -> None:
    """So a process can import both (the default descriptor pool holds one of each name)."""
    assert grpc_service_pb2.DESCRIPTOR.serialized_pb == triton_service.DESCRIPTOR.serialized_pb
    assert (
        model_config_pb2.DESCRIPTOR.serialized_pb
        == triton_service.model__config__pb2.DESCRIPTOR.serialized_pb
    )


def test_every_error_code_has_a_grpc_status() -> None:
    for code in Code:
        assert code.grpc in grpc.StatusCode.__members__, code


def test_the_master_refuses_a_grpc_port_in_use(small_repository: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        argv = [sys.executable, "-m", "serve.cli", "serve",
                "--model-repository", str(small_repository),
                "--port", str(free_port()), "--grpc-port", str(port)]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert done.returncode != 0
    assert f"gRPC port {port}: Address already in use" in done.stderr


def test_grpc_port_zero_turns_grpc_off(small_repository: Path) -> None:
    srv = start_server(small_repository, extra_args=["--grpc-port", "0"])
    try:
        assert srv.get("/v2/health/ready").status_code == 200
        assert "gRPC" not in srv.log()
    finally:
        srv.stop()


@pytest.mark.parametrize("worker_class", ["async", "gthread"])
def test_both_worker_classes_serve_grpc(small_repository: Path, worker_class: str) -> None:
    import numpy as np

    srv = start_server(small_repository, workers=2, extra_args=["--worker-class", worker_class])
    try:
        for _ in range(6):  # new connections land on either worker
            with grpcclient.InferenceServerClient(srv.grpc_url) as client:
                x = grpcclient.InferInput("x", [1, 16], "FP32")
                x.set_data_from_numpy(np.ones((1, 16), np.float32))
                assert client.infer("mlp", [x]).as_numpy("y").shape == (1, 8)

        def serving() -> set[str]:
            return {line.split("[")[2].split("]")[0] for line in srv.log().splitlines()
                    if "tapeserve.grpc: gRPC" in line}  # fmt: skip

        wait_for(lambda: len(serving()) == 2, "every worker to serve the gRPC port")
    finally:
        srv.stop()
