"""The admin plane never takes a Python model (model.py is code) unless the server was started
with --allow-python-models; with the flag, one loads and serves like any model."""

from __future__ import annotations

import base64
import json

import pytest

from tests.pipelines import probes
from tests.pipelines.conftest import HERE

TOKEN = "admin-secret"


def _load_body() -> dict:
    model = HERE / "models" / "double"
    return {"parameters": {
        "config": (model / "config.json").read_text(),
        "file:1/model.py": base64.b64encode((model / "1" / "model.py").read_bytes()).decode(),
    }}  # fmt: skip


@pytest.mark.parametrize("allowed", [False, True])
def test_admin_load_of_a_python_model(tapeserve_server, tmp_path, allowed: bool) -> None:
    args = ["--model-control-mode", "explicit"] + (["--allow-python-models"] if allowed else [])
    server = tapeserve_server(tmp_path, workers=1, extra_args=args,
                              env={"TAPESERVE_ADMIN_TOKEN": TOKEN})  # fmt: skip
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = server.post("/v2/repository/models/double/load", json=_load_body(), headers=headers)
    if not allowed:
        assert r.status_code == 403, r.text
        assert "--allow-python-models" in r.json()["error"]
        assert not (tmp_path / "double").exists()  # nothing was written
        config_only = {"parameters": {"config": _load_body()["parameters"]["config"]}}
        r = server.post("/v2/repository/models/double/load", json=config_only, headers=headers)
        assert r.status_code == 403
        return
    assert r.status_code == 200, r.text
    assert json.loads(r.text)["versions"][0]["state"] == "READY"
    answer = probes.infer(server.url, "double", [probes.fp32("X", [probes.A])])
    assert answer["body"]["outputs"][0]["data"] == [2, 4, 6, 8]
