"""Before/after without HTTP: CPU per inference request of `serve/` at a git revision and of the
working tree, both driven in-process the way their front doors are, side by side.

Each round starts one fresh process per side (the revision's `serve/` first on PYTHONPATH, or
the working tree), builds the server with `serve.app:create_app()`, and drives the inference
route directly: the event-loop fast path as uvicorn calls it (`--concurrency` requests in
flight on one loop) and the Flask app as a WSGI server calls it (one request at a time). It
reports CPU microseconds per request (process time, model compute and the batcher's threads
included) for each face, body and side; sides alternate round by round so machine load drifts
hit both alike, and the table gives the median round, the new/base ratio of the medians and of
the best rounds (the least disturbed by other load). Machine noise
moves process time far less than wall-clock throughput, so this resolves differences of a few
percent that `ab_serving.py` (wrk over loopback) cannot on a shared machine.

    .venv/bin/python benchmarks/ab_inprocess.py [--base 89011d2] [--model cnn|identity]
        [--requests 3000] [--concurrency 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Runs in the side's own process: build the server, drive it, print one JSON line.
DRIVER = r"""
import asyncio, io, json, os, sys, time
import numpy as np
from serve.app import create_app
from serve.settings import Settings

repo, model, requests, concurrency = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
bodies = json.loads(open(sys.argv[5]).read())
app = create_app(Settings(model_repository=repo, log_level="warning", workers=1))
if hasattr(app, "asgi"):  # the inference core (2026-12)
    registry, asgi, wsgi = app.core.registry, app.asgi(threads=2), app
else:  # before: the Flask app, wrapped by serve.asgi
    from serve.asgi import wrap
    registry, asgi, wsgi = app.extensions["tapeserve"].registry, wrap(app, threads=2), app
assert registry.wait_loaded(60) and registry.ready(strict=True)
path = f"/v2/models/{model}/infer"


def scope_for(body, headers):
    hs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": hs + [(b"content-length", str(len(body)).encode())],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def one(scope, body):
    sent = []
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        sent.append(message)
    await asgi(scope, receive, send)
    assert sent[0]["status"] == 200, sent


async def fast(body, headers, n):
    scope = scope_for(body, headers)
    left = [n]
    async def client():
        while left[0] > 0:
            left[0] -= 1
            await one(scope, body)
    await asyncio.gather(*(client() for _ in range(concurrency)))


def flask(body, headers, n):
    base = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": headers.get("Content-Type", "application/json")}
    for k, v in headers.items():
        base["HTTP_" + k.upper().replace("-", "_")] = v
    status = []
    def start(s, h, exc_info=None):
        status.append(s)
    for _ in range(n):
        env = dict(base, **{"wsgi.input": io.BytesIO(body)})
        b"".join(wsgi(env, start))
    assert status[-1].startswith("200"), status[-1]


out = {}
for kind, (hex_body, headers) in bodies.items():
    body = bytes.fromhex(hex_body)
    asyncio.run(fast(body, headers, 200))  # warm-up
    t0 = time.process_time(); asyncio.run(fast(body, headers, requests)); t1 = time.process_time()
    out[f"fast {kind}"] = (t1 - t0) / requests * 1e6
    flask(body, headers, 100)
    n = requests // 2
    t0 = time.process_time(); flask(body, headers, n); t1 = time.process_time()
    out[f"flask {kind}"] = (t1 - t0) / n * 1e6
print("RESULT " + json.dumps(out))
os._exit(0)
"""


def export_serve(rev: str, target: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "serve"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)


def identity_model():
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 28, 28])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision of the baseline")
    parser.add_argument("--model", default="cnn", choices=("cnn", "identity"))
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import onnx

    from benchmarks.serving import build_model, sample, v2_body, write_repository

    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-abin-"))
    try:
        base_src = scratch / "base"
        base_src.mkdir()
        export_serve(args.base, base_src)
        model_path = scratch / "model.onnx"
        onnx.save(build_model("cnn") if args.model == "cnn" else identity_model(), model_path)
        write_repository(scratch / "repo", {args.model: model_path}, 64)
        x = sample("cnn")
        bodies = {}
        for kind in ("json", "binary"):
            body, headers = v2_body(x, kind == "binary")
            bodies[kind] = (body.hex(), headers)
        (scratch / "bodies.json").write_text(json.dumps(bodies))
        (scratch / "driver.py").write_text(DRIVER)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAPESERVE_")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["OMP_NUM_THREADS"] = "1"
        sides = {"base": {**env, "PYTHONPATH": str(base_src)}, "new": env}
        rows: dict[str, dict[str, list[float]]] = {"base": {}, "new": {}}
        print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for side in order:
                done = subprocess.run(
                    [sys.executable, str(scratch / "driver.py"), str(scratch / "repo"),
                     f"{args.model}_batch", str(args.requests), str(args.concurrency),
                     str(scratch / "bodies.json")],
                    capture_output=True, text=True, env=sides[side], cwd=scratch, timeout=600,
                )  # fmt: skip
                line = [s for s in done.stdout.splitlines() if s.startswith("RESULT ")]
                if not line:
                    sys.exit(f"{side} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                result = json.loads(line[0][len("RESULT ") :])
                for key, value in result.items():
                    rows[side].setdefault(key, []).append(value)
                print(f"round {round_ + 1} {side}: " + ", ".join(
                    f"{k} {v:.0f} us" for k, v in result.items()), flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"\n{args.model}, {args.requests} requests per face, fast path at concurrency "
        f"{args.concurrency}; base {args.base} vs working tree; median of {args.rounds} "
        f"rounds; load average now {os.getloadavg()[0]:.1f}\n"
    )
    print("| face, body | base us/request | new us/request | new/base (median) | new/base (best) |")
    print("|---|---|---|---|---|")
    for key in rows["base"]:
        b, n = statistics.median(rows["base"][key]), statistics.median(rows["new"][key])
        best = min(rows["new"][key]) / min(rows["base"][key])
        print(f"| {key} | {b:.0f} | {n:.0f} | {n / b:.3f} | {best:.3f} |")


if __name__ == "__main__":
    main()
