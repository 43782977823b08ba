"""RepositoryModelLoad / RepositoryModelUnload over gRPC: tritonclient's load_model and
unload_model with the admin token in the `authorization` metadata, on explicit model control
(2 workers: every worker applies the change)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.serve import builders

TOKEN = "admin-s3cret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def explicit(tmp_path_factory):
    repo = tmp_path_factory.mktemp("explicit")
    builders.write_model(repo, "mlp", builders.mlp((16, 32, 8)), config={"max_batch_size": 8})
    from tests.support.server import start_server

    srv = start_server(
        repo,
        workers=2,
        extra_args=["--model-control-mode", "explicit", "--poll-interval", "0.2"],
        env={"TAPESERVE_ADMIN_TOKEN": TOKEN},
    )
    yield srv, repo
    srv.stop()


def _error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def _answers(client, name: str) -> bool:
    x = grpcclient.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.ones((1, 3), np.float32))
    try:
        client.infer(name, [x])
    except InferenceServerException:
        return False
    return True


def test_the_admin_token_is_required(explicit) -> None:
    srv, _ = explicit
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        missing = _error(lambda: client.unload_model("mlp"))
        wrong = _error(lambda: client.unload_model("mlp", headers={"authorization": "Bearer x"}))
        bad_name = _error(lambda: client.load_model("../etc", headers=AUTH))
    assert missing.status() == "StatusCode.UNAUTHENTICATED" and "admin API" in missing.message()
    assert wrong.status() == "StatusCode.PERMISSION_DENIED"
    assert (
        bad_name.status() == "StatusCode.INVALID_ARGUMENT"
        and "path separator" in bad_name.message()
    )
    assert srv.get("/v2/models/mlp/ready").status_code == 200, "nothing was unloaded"


def test_load_with_config_and_files_then_unload(explicit) -> None:
    srv, repo = explicit
    model = builders.identity("FP32", ("N", 3)).SerializeToString()
    config = json.dumps({"max_batch_size": 4})
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        client.load_model("ident", config=config, files={"file:1/model.onnx": model}, headers=AUTH)
        assert (repo / "ident" / "1" / "model.onnx").read_bytes() == model
        assert json.loads((repo / "ident" / "config.json").read_text()) == {"max_batch_size": 4}
        assert client.is_model_ready("ident")
        assert client.get_model_config("ident").config.max_batch_size == 4
        for _ in range(8):  # both workers (connections spread over them) serve it
            assert _answers(grpcclient.InferenceServerClient(srv.grpc_url), "ident")
        exists = _error(
            lambda: client.load_model("ident", files={"file:1/model.onnx": model}, headers=AUTH)
        )
        assert exists.status() == "StatusCode.ALREADY_EXISTS"
        client.unload_model("ident", headers=AUTH)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and srv.get("/v2/models/ident").status_code != 404:
            time.sleep(0.1)  # the other worker applies it at its next check
        for _ in range(8):
            assert not _answers(grpcclient.InferenceServerClient(srv.grpc_url), "ident")


def test_a_bad_model_or_config_is_refused_with_its_reason(explicit) -> None:
    srv, repo = explicit
    with grpcclient.InferenceServerClient(srv.grpc_url) as client:
        garbage = _error(
            lambda: client.load_model(
                "junk", files={"file:1/model.onnx": b"not onnx"}, headers=AUTH
            )
        )
        config = _error(
            lambda: client.load_model("mlp", config='{"max_batch_size": "8"}', headers=AUTH)
        )
        python = _error(
            lambda: client.load_model("py", files={"file:1/model.py": b"x = 1"}, headers=AUTH)
        )
    assert garbage.status() == "StatusCode.INVALID_ARGUMENT"
    assert "model rejected" in garbage.message() and "not a valid ONNX model" in garbage.message()
    assert not (repo / "junk" / "1").exists(), "an unvetted file never enters the repository"
    assert config.status() == "StatusCode.INVALID_ARGUMENT" and "max_batch_size" in config.message()
    assert python.status() == "StatusCode.PERMISSION_DENIED"
    assert "--allow-python-models" in python.message()


def test_admin_plane_disabled_without_a_token(tmp_path: Path) -> None:
    from tests.support.server import start_server

    builders.write_model(tmp_path, "mlp", builders.mlp((16, 32, 8)))
    srv = start_server(tmp_path, extra_args=["--model-control-mode", "explicit"])
    try:
        with grpcclient.InferenceServerClient(srv.grpc_url) as client:
            error = _error(lambda: client.unload_model("mlp", headers=AUTH))
    finally:
        srv.stop()
    assert error.status() == "StatusCode.PERMISSION_DENIED"
    assert "--admin-token-file" in error.message()


def test_asyncio_client_loads_and_unloads(explicit) -> None:
    import asyncio

    import tritonclient.grpc.aio as aioclient

    srv, _ = explicit
    model = builders.identity("FP32", ("N", 3)).SerializeToString()

    async def main() -> None:
        async with aioclient.InferenceServerClient(srv.grpc_url) as client:
            await client.load_model("ident_aio", files={"file:1/model.onnx": model}, headers=AUTH)
            assert await client.is_model_ready("ident_aio")
            await client.unload_model("ident_aio", headers=AUTH)
            with pytest.raises(InferenceServerException) as gone:
                await client.is_model_ready("ident_aio")
            assert gone.value.status() == "StatusCode.NOT_FOUND"

    asyncio.run(main())
