"""One shared model repository and server for the serve tests (starting Gunicorn costs ~1 s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serve import builders
from tests.support.server import RunningServer, start_server

DATATYPES = list(builders.V2_TO_ONNX)


def build_repository(root: Path) -> Path:
    """Every model the serve tests use, including a broken one and a bad config."""
    builders.write_model(root, "mlp", builders.mlp((16, 32, 8)), config={"max_batch_size": 32})
    builders.write_model(root, "addmul", builders.add_mul())
    builders.write_model(root, "nobatch", builders.mlp((16, 32, 8)), config={"max_batch_size": 0})
    builders.write_model(root, "fixed", builders.identity("FP32", (2, 3)))
    for datatype in DATATYPES:
        builders.write_model(root, f"id_{datatype.lower()}", builders.identity(datatype))
    builders.write_model(root, "lookup", builders.lookup())
    builders.write_model(root, "busy", builders.busy(), config={"max_queue_size": 1})
    builders.write_model(root, "busy_timeout", builders.busy(), config={"default_timeout_ms": 50})
    builders.write_model(root, "versions", builders.identity("FP32"), version=1)
    builders.write_model(
        root, "versions", builders.add_mul(), version=2, config={"version_policy": {"all": True}}
    )
    builders.write_model(
        root, "delayed", builders.mlp((16, 32, 8)), config={"max_queue_delay_ms": 300}
    )
    builders.write_model(root, "on_cuda", builders.identity(), config={"device": "cuda"})
    builders.write_model(
        root,
        "goodsample",
        builders.identity(),
        config={"warmup": [{"x": {"shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}}],
                "instance_count": 2},
    )  # fmt: skip
    builders.write_model(root, "broken", b"this is not an onnx model")
    builders.write_model(root, "badconfig", builders.identity(), config={"max_batch_size": "8"})
    builders.write_model(
        root,
        "badsample",
        builders.identity(),
        config={"warmup": [{"x": {"shape": [1, 2], "data": [1, 2]}}]},
    )
    return root


@pytest.fixture
def small_repository(tmp_path: Path) -> Path:
    """Just `mlp` (batching) and `broken`: for tests that start a server of their own."""
    builders.write_model(tmp_path, "mlp", builders.mlp((16, 32, 8)), config={"max_batch_size": 32})
    builders.write_model(tmp_path, "broken", b"this is not an onnx model")
    return tmp_path


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def server(repository: Path) -> Iterator[RunningServer]:
    """The shared server: 1 worker, 8 threads, default settings."""
    srv = start_server(repository)
    yield srv
    srv.stop()
