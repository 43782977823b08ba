"""One server for the gRPC tests: the serve tests' repository, served over HTTP and gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.serve import builders
from tests.serve.conftest import build_repository
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="session")
def grpc_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("grpc-repository"))


@pytest.fixture(scope="module")
def server(grpc_repository: Path) -> Iterator[RunningServer]:
    """1 worker, the async worker class (uvloop): gRPC on the worker's own event loop."""
    srv = start_server(grpc_repository)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


@pytest.fixture(scope="module")
def rest(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")


@pytest.fixture
def small_repository(tmp_path: Path) -> Path:
    """Just `mlp` (batching): for tests that start a server of their own."""
    builders.write_model(tmp_path, "mlp", builders.mlp((16, 32, 8)), config={"max_batch_size": 32})
    return tmp_path
