"""An ensemble through the admin plane (REST and gRPC load with a config), as Triton takes it:
its version folder comes as a `file:<version>/<name>` parameter of any content (an ensemble's
version folder holds no model file); a config alone for an ensemble the repository does not
have is refused, naming that fix, and nothing is written."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.pipelines.conftest import onnx_ensemble

TOKEN = "admin-secret"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
FEEDS = {"a": np.ones((2, 16), np.float32), "b": np.ones((2, 16), np.float32)}


def _steps_only(root: Path) -> str:
    """The repository with the ensemble's steps (am, mlp) and not the ensemble; its config."""
    onnx_ensemble(root)
    config = json.loads((root / "onnx_pair" / "config.json").read_text())
    shutil.rmtree(root / "onnx_pair")
    return json.dumps(config)


def _scores(server, model: str) -> list:
    inputs = [{"name": n, "datatype": "FP32", "shape": [2, 16], "data": a.ravel().tolist()}
              for n, a in FEEDS.items()]  # fmt: skip
    r = server.post(f"/v2/models/{model}/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    return r.json()["outputs"][0]["shape"]


@pytest.fixture
def admin_server(tapeserve_server, tmp_path):
    config = _steps_only(tmp_path)
    server = tapeserve_server(tmp_path, workers=1, extra_args=["--model-control-mode", "explicit"],
                              env={"TAPESERVE_ADMIN_TOKEN": TOKEN})  # fmt: skip
    return server, config, tmp_path


def test_rest_load_of_an_ensemble(admin_server) -> None:
    server, config, repo = admin_server
    url = "/v2/repository/models/pair/load"
    alone = server.post(url, json={"parameters": {"config": config}}, headers=HEADERS)
    assert alone.status_code == 400, alone.text
    assert "'file:1/" in alone.json()["error"] and "ensemble" in alone.json()["error"]
    assert not (repo / "pair").exists()  # nothing was written

    placeholder = base64.b64encode(b"").decode()
    body = {"parameters": {"config": config, "file:1/ensemble": placeholder}}
    loaded = server.post(url, json=body, headers=HEADERS)
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["versions"][0]["state"] == "READY"
    assert server.get("/v2/models/pair/ready").status_code == 200
    assert _scores(server, "pair") == [2, 8]
    # Now that its version folder is there, a config alone (re)loads it, as in Triton.
    again = server.post(url, json={"parameters": {"config": config}}, headers=HEADERS)
    assert again.status_code == 200, again.text
    assert _scores(server, "pair") == [2, 8]


def test_grpc_load_of_an_ensemble(admin_server) -> None:
    server, config, repo = admin_server
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        metadata = [("authorization", f"Bearer {TOKEN}")]
        with pytest.raises(InferenceServerException) as refused:
            client.load_model("pair", headers=dict(metadata), config=config)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "'file:1/" in refused.value.message()
        assert not (repo / "pair").exists()
        client.load_model("pair", headers=dict(metadata), config=config,
                          files={"file:1/ensemble": b""})  # fmt: skip
        assert client.is_model_ready("pair")
    assert _scores(server, "pair") == [2, 8]
