"""Requests per second of a 784-512-512-10 MLP served by tapeserve, with and without batching.

Starts a real `tapeserve serve` (Gunicorn) on a temporary repository holding the same MLP twice
(`mlp_batch`: max_batch_size 64; `mlp_nobatch`: max_batch_size 0), checks one answer against
onnxruntime run directly, then drives each model with wrk (one sample per request, a fixed
~16 KB JSON body) at 1 and 32 concurrent connections, alternating the two models round after
round, and prints a table with the batching run as a ratio of the no-batching baseline.

    .venv/bin/python benchmarks/serve_quick.py [--duration 10] [--rounds 3] [--workers 1]
        [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serve.builders import mlp, write_model  # noqa: E402
from tests.support.server import start_server  # noqa: E402

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""


def run_wrk(url: str, body_file: Path, connections: int, duration: int) -> dict:
    """Run wrk once; returns req/s, p50 and p99 latency (ms) and the error count."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(body_file),
         url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def latency(pct: str) -> float:
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    non_2xx = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = {"non-2xx": non_2xx}
    if socket:
        errors.update(
            zip(("connect", "read", "write", "timeout"), map(int, socket.groups()), strict=True)
        )
    return {"rps": rps, "p50": latency("50"), "p99": latency("99"), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured cell")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per cell")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per cell")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")

    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-bench-"))
    model = mlp((784, 512, 512, 10))
    write_model(scratch, "mlp_batch", model, config={"max_batch_size": 64})
    write_model(scratch, "mlp_nobatch", model, config={"max_batch_size": 0})
    x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1, 784], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    )
    lua = scratch / "body.lua"
    lua.write_text(LUA.format(body=body))
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]

    server = start_server(
        scratch, workers=args.workers, threads=args.threads, extra_args=["--log-level", "warning"]
    )
    try:
        names = ("mlp_nobatch", "mlp_batch")
        urls = {name: f"{server.url}/v2/models/{name}/infer" for name in names}
        for url in urls.values():
            answer = requests.post(url, data=body, timeout=30).json()["outputs"][0]["data"]
            np.testing.assert_allclose(np.array(answer).reshape(1, 10), expected, rtol=1e-4)
        # baseline and batching alternate, round after round, so drift in the machine's load
        # hits both alike; each cell reports its median round
        runs: dict[tuple[str, int], list[dict]] = {}
        for c in args.concurrency:
            for name in names:
                run_wrk(urls[name], lua, c, args.warmup)
            for _ in range(args.rounds):
                for name in names:
                    runs.setdefault((name, c), []).append(
                        run_wrk(urls[name], lua, c, args.duration)
                    )
        results = {key: sorted(r, key=lambda x: x["rps"])[len(r) // 2] for key, r in runs.items()}
        errors = {key: sum((Counter(x["errors"]) for x in r), Counter()) for key, r in runs.items()}
        text = server.metrics()
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    def avg_batch(name: str) -> float:
        def value(metric: str) -> float:
            m = re.search(rf'{metric}{{model="{name}",version="1"}} ([\d.e+]+)', text)
            return float(m.group(1)) if m else 0.0

        batches = value("tapeserve_inference_batches_total")
        return value("tapeserve_inference_samples_total") / batches if batches else 0.0

    print(
        f"\n784-512-512-10 MLP, 1 sample per request ({len(body) // 1024} KiB JSON), "
        f"{args.workers} worker(s) x {args.threads} threads, wrk -t1, median of {args.rounds} "
        f"alternating {args.duration} s rounds per cell\n"
    )
    print("| clients | no batching req/s (p50 / p99 ms) | batching req/s (p50 / p99 ms) | ratio |")
    print("|---|---|---|---|")
    for c in args.concurrency:
        base, batch = results[("mlp_nobatch", c)], results[("mlp_batch", c)]
        print(
            f"| {c} | {base['rps']:.0f} ({base['p50']:.1f} / {base['p99']:.1f}) "
            f"| {batch['rps']:.0f} ({batch['p50']:.1f} / {batch['p99']:.1f}) "
            f"| {batch['rps'] / base['rps']:.2f}x |"
        )
    print(f"\nmean batch size with batching (whole run): {avg_batch('mlp_batch'):.1f}")
    failed = {k: dict(+v) for k, v in errors.items() if +v}
    if failed:
        print(f"failed requests over all rounds (wrk; timeout = no answer in 2 s): {failed}")


if __name__ == "__main__":
    main()
