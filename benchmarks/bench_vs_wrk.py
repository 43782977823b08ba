"""How far `tapeserve bench` (a Python client) agrees with wrk (a C client) on the same server.

Starts tapeserve on the benchmark CNN (batching on), then for each concurrency runs wrk and
`tapeserve bench` in turn with the same body and prints req/s and p50 of both with their ratio.
Triton's perf_analyzer would be the natural reference, but the PyPI `perf-analyzer` package
(0.1.0) is an empty placeholder without the binary, so wrk is the reference here.

    .venv/bin/python benchmarks/bench_vs_wrk.py [--duration 5] [--connections 1,8,64] [--binary]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import serving  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--binary", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-bench-vs-wrk-"))
    try:
        model = scratch / "cnn.onnx"
        model.write_bytes(serving.build_model("cnn").SerializeToString())
        serving.write_repository(scratch / "repo", {"cnn": model}, 64)
        body, headers = serving.v2_body(serving.sample("cnn"), args.binary)
        body_file = scratch / "body"
        body_file.write_bytes(body)
        print("| connections | wrk req/s | bench req/s | ratio | wrk p50 ms | bench p50 ms |")
        print("|---|---|---|---|---|---|")
        with serving.tapeserve(scratch / "repo", workers=args.workers, threads=args.threads) as srv:
            url = srv.url + "/v2/models/cnn_batch/infer"
            for c in (int(x) for x in args.connections.split(",")):
                serving.run_wrk(url, body_file, headers, c, args.warmup)
                wrk = serving.run_wrk(url, body_file, headers, c, args.duration)
                out = scratch / f"bench-{c}.json"
                subprocess.run(
                    [sys.executable, "-m", "serve.cli", "bench", "cnn_batch", "--url", srv.url,
                     "-c", str(c), "-d", str(args.duration), "--warmup", str(args.warmup),
                     "--binary" if args.binary else "--json", "--json-out", str(out),
                     "--no-progress"],
                    check=True, capture_output=True,
                )  # fmt: skip
                ours = json.loads(out.read_text())["results"][0]
                print(
                    f"| {c} | {wrk['rps']:.0f} | {ours['throughput']:.0f} | "
                    f"{ours['throughput'] / wrk['rps']:.2f} | {wrk['p50_ms']:.2f} | "
                    f"{ours['latency_ms']['p50']:.2f} |",
                    flush=True,
                )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
