"""Weights that do not multiply with workers: every worker maps the one optimized copy (with
pre-packed weights) that the first worker wrote, so an extra worker costs its own interpreter and
buffers, not another copy of the model. Measured as the summed PSS of the server's process tree,
against the same server with `share_weights: false` (a private copy per worker, as before)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from modelzoo import build
from modelzoo.graphs import LARGE_SIZES
from tests.support.memory import memory_kb, process_tree
from tests.support.server import start_server

WEIGHT_MB = LARGE_SIZES["medium"].weight_bytes / 2**20  # 136 MiB


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    return build("large", tmp_path_factory.mktemp("shared"), size="medium")


def _served_pss_mb(member, tmp_path, workers: int, share: bool) -> tuple[float, str]:
    repo = tmp_path / f"repo-{workers}-{share}"
    shutil.copytree(member.directory, repo / "large")
    (repo / "large" / "config.json").write_text(json.dumps({"share_weights": share}))
    server = start_server(repo, workers=workers, timeout=180)
    try:
        feeds = member.inputs(batch=2, seed=5)
        expected = member.reference(feeds)["y"]
        body = {"inputs": [{"name": "x", "shape": [2, 1024 * 2], "datatype": "FP32",
                            "data": feeds["x"].ravel().tolist()}]}  # fmt: skip
        for _ in range(8 * workers):  # every worker answers, touching all of its weights
            out = server.post("/v2/models/large/infer", json=body).json()["outputs"][0]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        time.sleep(0.5)
        _, pss = memory_kb(process_tree(server.process.pid))
        return pss / 1024, server.log()
    finally:
        server.stop()


def test_extra_workers_share_one_copy_of_the_weights(medium, tmp_path):
    one, _ = _served_pss_mb(medium, tmp_path, 1, share=True)
    three, log = _served_pss_mb(medium, tmp_path, 3, share=True)
    assert "optimized copy" in log and "shared by every worker" in log
    private_one, _ = _served_pss_mb(medium, tmp_path, 1, share=False)
    private_three, _ = _served_pss_mb(medium, tmp_path, 3, share=False)
    shared_extra = (three - one) / 2
    private_extra = (private_three - private_one) / 2
    summary = (
        f"weights {WEIGHT_MB:.0f} MB; shared: 1 worker {one:.0f} MB, 3 workers {three:.0f} MB "
        f"({shared_extra:.0f} MB per extra worker); private: {private_one:.0f} / "
        f"{private_three:.0f} MB ({private_extra:.0f} MB per extra worker)"
    )
    assert private_extra > 0.8 * WEIGHT_MB, summary  # the measurement sees a private copy
    # an extra worker costs its interpreter and buffers; the weights it no longer copies
    assert private_extra - shared_extra > 0.8 * WEIGHT_MB, summary
