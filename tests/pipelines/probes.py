"""The requests that compare tapeserve with Triton on the models of tests/pipelines/models.

`run_probes(url)` sends each probe and returns {probe name: {"status": ..., "body": ...}};
tests/pipelines/triton_reference.py runs it against a real tritonserver and tapeserve and
prints where they differ; the tests assert the answers a client depends on.
"""

from __future__ import annotations

import concurrent.futures
import json
from typing import Any

import requests

A = [1.0, 2.0, 3.0, 4.0]
B = [0.5, 0.5, 0.5, 0.5]


def fp32(name: str, rows: list[list[float]]) -> dict:
    return {
        "name": name,
        "datatype": "FP32",
        "shape": [len(rows), len(rows[0])],
        "data": [v for r in rows for v in r],
    }


def _answer(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return {"status": response.status_code, "body": body}


def infer(
    url: str, model: str, inputs: list[dict], outputs: list[dict] | None = None, timeout: float = 30
) -> dict[str, Any]:
    doc: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        doc["outputs"] = outputs
    return _answer(requests.post(f"{url}/v2/models/{model}/infer", json=doc, timeout=timeout))


def probe_requests(url: str) -> dict[str, Any]:
    """Every probe but the slow ones (crash, hang)."""
    x5 = [[0.1, 0.7, 0.05, 0.9, 0.2], [3.0, 1.0, 2.0, 0.0, 5.0]]
    got: dict[str, Any] = {
        "add_sub metadata": _answer(requests.get(f"{url}/v2/models/add_sub", timeout=10)),
        "add_sub infer": infer(
            url,
            "add_sub",
            [fp32("INPUT0", [A, B]), fp32("INPUT1", [B, A])],
            [{"name": "OUTPUT0"}, {"name": "OUTPUT1"}],
        ),
        "raiser raises": infer(url, "raiser", [fp32("X", [[1, 0, 0, 0]])]),
        "raiser error response": infer(url, "raiser", [fp32("X", [[2, 0, 0, 0]])]),
        "raiser ok": infer(url, "raiser", [fp32("X", [[3, 0, 0, 0]])]),
        "wrong_count": infer(url, "wrong_count", [fp32("X", [A])]),
        "bls add_sub": infer(
            url,
            "bls",
            [
                fp32("INPUT0", [A]),
                fp32("INPUT1", [B]),
                {"name": "MODEL_NAME", "datatype": "BYTES", "shape": [1, 1], "data": ["add_sub"]},
            ],
        ),
        "bls unknown model": infer(
            url,
            "bls",
            [
                fp32("INPUT0", [A]),
                fp32("INPUT1", [B]),
                {"name": "MODEL_NAME", "datatype": "BYTES", "shape": [1, 1], "data": ["nope"]},
            ],
        ),
        "classification batched top3": infer(
            url,
            "scores",
            [fp32("X", x5)],
            [{"name": "SCORES", "parameters": {"classification": 3}}],
        ),
        "classification int top2": infer(
            url,
            "scores",
            [fp32("X", x5)],
            [{"name": "COUNTS", "parameters": {"classification": 2}}],
        ),
        "classification k above size": infer(
            url,
            "scores",
            [fp32("X", x5[:1])],
            [{"name": "SCORES", "parameters": {"classification": 9}}],
        ),
        "classification and plain": infer(
            url,
            "scores",
            [fp32("X", x5[:1])],
            [{"name": "SCORES", "parameters": {"classification": 1}}, {"name": "COUNTS"}],
        ),
        "classification zero": infer(
            url,
            "scores",
            [fp32("X", x5[:1])],
            [{"name": "SCORES", "parameters": {"classification": 0}}],
        ),
        "classification unbatched": infer(
            url,
            "scores_unbatched",
            [{"name": "X", "datatype": "FP32", "shape": [5], "data": x5[0]}],
            [{"name": "SCORES", "parameters": {"classification": 2}}],
        ),
        "ens_two metadata": _answer(requests.get(f"{url}/v2/models/ens_two", timeout=10)),
        "ens_two ready": _answer(requests.get(f"{url}/v2/models/ens_two/ready", timeout=10)),
        "ens_two infer": infer(url, "ens_two", [fp32("A", [A]), fp32("B", [B])]),
        "ens_three infer": infer(url, "ens_three", [fp32("A", [A]), fp32("B", [B])]),
        "ens_fail step raises": infer(
            url, "ens_fail", [fp32("A", [[1, 0, 0, 0]]), fp32("B", [[0, 0, 0, 0]])]
        ),
        "ens_fail step error response": infer(
            url, "ens_fail", [fp32("A", [[2, 0, 0, 0]]), fp32("B", [[0, 0, 0, 0]])]
        ),
        "ens_two missing input": infer(url, "ens_two", [fp32("A", [A])]),
    }
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(
                lambda _: infer(url, "add_sub", [fp32("INPUT0", [A]), fp32("INPUT1", [B])]),
                range(64),
            )
        )
    got["add_sub concurrent ok"] = all(a["status"] == 200 for a in answers)
    got["add_sub concurrent max requests per execute"] = max(
        o["data"][0] for a in answers for o in a["body"]["outputs"] if o["name"] == "REQUESTS"
    )
    return got


def probe_crash(url: str) -> dict[str, Any]:
    return {
        "crasher crashes": infer(url, "crasher", [fp32("X", [[1, 0, 0, 0]])]),
        "crasher after crash": infer(url, "crasher", [fp32("X", [[3, 0, 0, 0]])]),
        "crasher ready after crash": _answer(
            requests.get(f"{url}/v2/models/crasher/ready", timeout=10)
        ),
    }


def probe_hang(url: str, timeout_us: int = 2_000_000) -> dict[str, Any]:
    """A request with a 2 s deadline on a model that never returns; then a normal request."""
    x = fp32("X", [[1, 0, 0, 0]])
    doc = {"inputs": [x], "parameters": {"timeout": timeout_us}}
    try:
        hung = _answer(requests.post(f"{url}/v2/models/hanger/infer", json=doc, timeout=15))
    except requests.Timeout:
        hung = {"status": None, "body": "no answer within 15 s"}
    try:
        after = infer(url, "hanger", [fp32("X", [[3, 0, 0, 0]])], timeout=15)
    except requests.Timeout:
        after = {"status": None, "body": "no answer within 15 s"}
    return {"hanger hangs": hung, "hanger after hang": after}


if __name__ == "__main__":
    import sys

    print(json.dumps(probe_requests(sys.argv[1]), indent=1))
