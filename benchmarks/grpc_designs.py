"""How a worker should serve gRPC: grpc.aio on its (uvloop) event loop, or gRPC's thread-pool
server (what tapeserve runs, serve/grpc/server.py), measured side by side.

Each round starts one process per design, each building the same worker (`create_app`: the
registry, the inference core) on the CNN of benchmarks/serving.py and serving ModelInfer one of
the two ways, then drives it with h2load at 1 and 64 connections (one call in flight on each);
designs alternate round by round so load drift hits both alike. The aio design hands the call to
`InferenceCore.serve_async` (its batch runs in a runner thread that wakes the loop); the pool
design to `InferenceCore.serve` in a pool thread (an idle model runs the call in that thread).
Process CPU per call is reported too (onnxruntime's threads included).

    .venv/bin/python benchmarks/grpc_designs.py [--designs aio,pool:8,pool:16] [--rounds 3]
        [--model cnn] [--duration 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.serving import (  # noqa: E402
    GRPC_PATH,
    build_model,
    grpc_body,
    run_h2load,
    sample,
    write_repository,
)
from tests.support.server import free_port  # noqa: E402

#: One design, serving in its own process until killed: `python -c SERVE design repo port`.
SERVE = r"""
import asyncio, sys, time
from concurrent import futures
import grpc
from serve.app import create_app
from serve.grpc.codec import GRPC
from serve.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from serve.settings import Settings

design, repo, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
worker = create_app(Settings(model_repository=repo, log_level="warning", workers=1))
assert worker.core.registry.wait_loaded(60)
core = worker.core

if design == "aio":
    import uvloop

    class Aio(pb_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request, context):
            async def read():
                return request
            call = await core.serve_async(GRPC, request.model_name, None, read)
            if call.failure is not None:
                await context.abort(grpc.StatusCode[call.failure.code.grpc], call.failure.message)
            return call.body

    async def main():
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(Aio(), server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await asyncio.sleep(3600)

    uvloop.install()
    asyncio.run(main())
else:
    from serve.grpc.server import GrpcServer
    server = GrpcServer(core, worker.admin, "127.0.0.1", port, int(design.split(":")[1]))
    server.start()
    print("ready", flush=True)
    time.sleep(3600)
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", default="aio,pool:8,pool:16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="cnn", choices=("cnn", "mlp"))
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-grpc-designs-"))
    onnx.save(build_model(args.model), scratch / "model.onnx")
    write_repository(scratch / "repo", {args.model: scratch / "model.onnx"}, 64)
    body = scratch / "body.bin"
    body.write_bytes(grpc_body(f"{args.model}_batch", sample(args.model)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPESERVE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    rows: dict[tuple[str, int], list[dict]] = {}
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    designs = args.designs.split(",")
    for round_ in range(args.rounds):
        for design in designs if round_ % 2 == 0 else list(reversed(designs)):
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, "-c", SERVE, design, str(scratch / "repo"), str(port)],
                stdout=subprocess.PIPE, env=env, text=True, cwd=scratch,
            )  # fmt: skip
            try:
                if process.stdout.readline().strip() != "ready":
                    sys.exit(f"{design} did not start")
                url = f"http://127.0.0.1:{port}{GRPC_PATH}"
                for connections in (1, 64):
                    run_h2load(url, body, connections, 1, scratch)
                    before = _cpu_seconds(process.pid)
                    result = run_h2load(url, body, connections, args.duration, scratch)
                    calls = max(1, result["requests"])
                    result["cpu_us"] = (_cpu_seconds(process.pid) - before) / calls * 1e6
                    rows.setdefault((design, connections), []).append(result)
                    print(
                        f"round {round_ + 1} {design:8s} c={connections:<3d} "
                        f"{result['rps']:7.0f} calls/s  p50 {result['p50_ms']:6.2f} ms  "
                        f"CPU {result['cpu_us']:5.0f} us/call  errors {result['errors']}",
                        flush=True,
                    )
            finally:
                process.kill()
                process.wait()
    print(
        f"\n{args.model}, one worker (intra-op threads 2), h2load 1 thread, median of "
        f"{args.rounds} alternating {args.duration:g} s rounds; load average now "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print("| design | c | calls/s | p50 ms | CPU us/call |")
    print("|---|---|---|---|---|")
    for (design, connections), results in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(
            f"| {design} | {connections} | {statistics.median(r['rps'] for r in results):,.0f} | "
            f"{statistics.median(r['p50_ms'] for r in results):.2f} | "
            f"{statistics.median(r['cpu_us'] for r in results):,.0f} |"
        )


if __name__ == "__main__":
    main()
