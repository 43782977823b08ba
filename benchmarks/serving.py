"""Serving benchmark: tapeserve against a hand-written Flask app, the HTTP floor and raw ORT.

One command, one run, every figure side by side on the same machine (it is shared and noisy, so
only figures from one run compare):

1. builds the MLP 784-512-512-10 and the small CNN (1x28x28 -> conv32 -> pool -> conv64 -> pool
   -> 128 -> 10) with fixed seeds (opset 17, IR 9), a fixed sample and its onnxruntime answer;
2. raw onnxruntime in-process (intra-op threads 2) at batch 1, 8, 32, 128: the compute limit;
3. servers, all started side by side and driven by wrk (1 thread, a separate process, Lua body)
   at 1, 8 and 64 connections after a warm-up, cells interleaved so load drift hits all alike:
   two HTTP floors answering a fixed body to the JSON and the binary request body (a bare WSGI
   callable under Gunicorn gthread, a bare ASGI app under Gunicorn's uvicorn worker with
   httptools and uvloop, as many workers as tapeserve); the hand-written Flask app (Gunicorn
   sync 2 workers and gthread 1 x 8, JSON, no batching); tapeserve on its default (async)
   worker with JSON and binary bodies, batching on (max_batch_size 64) and off, and on the
   gthread worker (`--worker-class gthread`) with batching on, to show what the worker buys;
   and tapeserve's gRPC service with the same tensors raw, driven by h2load (HTTP/2, one call in
   flight per connection, as wrk's connections);
4. every server's answer is checked against onnxruntime once per configuration; the server's
   peak memory (summed RSS and PSS of its process tree) is sampled while wrk runs;
5. writes `benchmarks/results/serving.{md,json,png}`: the table with ratios, the targets (the
   binary c=64 target against the lower of raw ORT's best and the fastest floor measured with
   the same body, named in the table), the plot (throughput and p99 against concurrency) and
   the machine, package versions and settings.

    .venv/bin/python benchmarks/serving.py [--models cnn,mlp] [--duration 5] [--warmup 2]

About 10 minutes with the defaults. Needs wrk, h2load and, for the plot, matplotlib
(`.[bench]`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import requests
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.servers.floor_app import ANSWER as FLOOR_ANSWER  # noqa: E402
from loadgen import grpc as grpc_bench  # noqa: E402
from loadgen import http as bench  # noqa: E402
from serve.settings import Settings  # noqa: E402
from tests.support.memory import memory_kb, process_tree  # noqa: E402
from tests.support.server import free_port, start_server  # noqa: E402

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk" / "post.lua"
RESULTS = HERE / "results"
SHAPES = {"mlp": (784,), "cnn": (1, 28, 28)}
OPSET, IR_VERSION = 17, 9
RAW_BATCHES = (1, 8, 32, 128)
#: The names --servers takes, in the order their rows appear in the table.
SERVERS = ("floor", "floor asgi", "flask sync", "flask gthread", "tapeserve", "tapeserve gthread")
#: Gunicorn worker class of the ASGI floor: its "auto" http and loop pick httptools and uvloop.
UVICORN_WORKER = "uvicorn_worker.UvicornWorker"
FLOOR_THREADS = 8
DEFAULT_WORKER_CLASS = Settings.worker_class  # what `tapeserve serve` runs without the option
GRPC_PATH = grpc_bench.MODEL_INFER

# ---------------------------------------------------------------------------------------------
# Models, samples, bodies


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _weights(rng: np.random.Generator, *shape: int, fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _gemm(rng, inits, nodes, inp: str, out: str, k: int, n: int, idx: int) -> None:
    w, b = f"W{idx}", f"B{idx}"
    inits += [_init(w, _weights(rng, n, k, fan_in=k)), _init(b, np.zeros(n) + 0.01)]
    nodes.append(helper.make_node("Gemm", [inp, w, b], [out], transB=1))


def _conv(rng, inits, nodes, inp: str, out: str, cin: int, cout: int, idx: int) -> None:
    w, b = f"C{idx}w", f"C{idx}b"
    inits += [
        _init(w, _weights(rng, cout, cin, 3, 3, fan_in=9 * cin)),
        _init(b, np.zeros(cout) + 0.01),
    ]
    nodes.append(helper.make_node("Conv", [inp, w, b], [out], kernel_shape=[3, 3], pads=[1] * 4))


def mlp_graph(rng: np.random.Generator) -> onnx.GraphProto:
    """x float32 [N,784] -> Gemm 512 -> Relu -> Gemm 512 -> Relu -> Gemm 10 -> y [N,10]."""
    inits: list = []
    nodes: list = []
    _gemm(rng, inits, nodes, "x", "h1", 784, 512, 1)
    nodes.append(helper.make_node("Relu", ["h1"], ["a1"]))
    _gemm(rng, inits, nodes, "a1", "h2", 512, 512, 2)
    nodes.append(helper.make_node("Relu", ["h2"], ["a2"]))
    _gemm(rng, inits, nodes, "a2", "y", 512, 10, 3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    return helper.make_graph(nodes, "mlp", [x], [y], inits)


def cnn_graph(rng: np.random.Generator) -> onnx.GraphProto:
    """x [N,1,28,28] -> Conv32 -> Relu -> MaxPool2 -> Conv64 -> Relu -> MaxPool2 -> Flatten ->
    Gemm 128 -> Relu -> Gemm 10 -> y [N,10]."""
    inits: list = []
    nodes: list = []
    _conv(rng, inits, nodes, "x", "c1", 1, 32, 1)
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    nodes.append(helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]))
    _conv(rng, inits, nodes, "p1", "c2", 32, 64, 2)
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"]))
    nodes.append(helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Flatten", ["p2"], ["f"], axis=1))
    _gemm(rng, inits, nodes, "f", "h1", 64 * 7 * 7, 128, 1)
    nodes.append(helper.make_node("Relu", ["h1"], ["a1"]))
    _gemm(rng, inits, nodes, "a1", "y", 128, 10, 2)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    return helper.make_graph(nodes, "cnn", [x], [y], inits)


def build_model(name: str, seed: int = 1234) -> onnx.ModelProto:
    """The seeded benchmark model `name` ("mlp" or "cnn"), checked, IR 9, opset 17."""
    graph = {"mlp": mlp_graph, "cnn": cnn_graph}[name](np.random.default_rng(seed))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def sample(name: str, seed: int = 42) -> np.ndarray:
    """The fixed one-row input of model `name`."""
    return np.random.default_rng(seed).random((1, *SHAPES[name]), dtype=np.float32)


def flask_body(x: np.ndarray) -> bytes:
    """The hand-written app's body: `{"inputs": nested list}`."""
    return json.dumps({"inputs": x.tolist()}).encode()


def v2_body(x: np.ndarray, binary_data: bool) -> tuple[bytes, dict]:
    """A V2 infer body for input `x` (JSON, or binary tensors in and out) and its headers."""
    return bench.encode_request({"x": x}, binary_data)


def grpc_body(model: str, x: np.ndarray) -> bytes:
    """A ModelInferRequest for input `x` (raw contents), framed as gRPC sends it: a 0 byte (not
    compressed), the length (4 bytes, big-endian), the message. h2load posts it as is."""
    message = grpc_bench.encode_request(model, "", {"x": x})
    return b"\0" + len(message).to_bytes(4, "big") + message


def grpc_outputs(answer: bytes) -> np.ndarray:
    response = grpc_bench.pb.ModelInferResponse.FromString(answer)
    out = response.outputs[0]
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(tuple(out.shape))


def flask_outputs(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["outputs"], dtype=np.float32)


def v2_outputs(body: bytes, headers: dict) -> np.ndarray:
    """Output `y` of a V2 answer, JSON or binary (Inference-Header-Content-Length)."""
    length = headers.get("inference-header-content-length")
    if length is None:
        out = json.loads(body)["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    head = json.loads(body[: int(length)])
    out = head["outputs"][0]
    return np.frombuffer(body, np.float32, offset=int(length)).reshape(out["shape"])


# ---------------------------------------------------------------------------------------------
# Raw onnxruntime


def raw_ort(path: Path, name: str, seconds: float = 0.4, repeats: int = 3) -> dict[int, dict]:
    """Samples/s and ms per call of onnxruntime in-process (intra-op 2) at each batch size."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out = {}
    for batch in RAW_BATCHES:
        feed = {"x": rng.random((batch, *SHAPES[name]), dtype=np.float32)}
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < 0.2:
            session.run(None, feed)
            calls += 1
        iters = max(3, int(calls / 0.2 * seconds))
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(iters):
                session.run(None, feed)
            rates.append(iters * batch / (time.perf_counter() - t))
        rate = statistics.median(rates)
        out[batch] = {"samples_per_s": round(rate, 1), "ms_per_call": round(batch / rate * 1e3, 4)}
    return out


def best_batch(raw: dict[int, dict]) -> int:
    return max(raw, key=lambda b: raw[b]["samples_per_s"])


# ---------------------------------------------------------------------------------------------
# Load and memory


class MemorySampler(threading.Thread):
    """Peak summed RSS/PSS of a process tree, polled every 0.25 s until `stop()`."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.peak_rss_kb, self.peak_pss_kb = root, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss, pss = memory_kb(process_tree(self.root))
            self.peak_rss_kb, self.peak_pss_kb = (
                max(self.peak_rss_kb, rss),
                max(self.peak_pss_kb, pss),
            )
            self._stop_event.wait(0.25)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def parse_wrk(stdout: str) -> dict:
    """The WRKJSON line printed by wrk/post.lua, plus the summed error count."""
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            result = json.loads(line[len("WRKJSON ") :])
            result["errors"] = sum(result[k] for k in result if k.startswith("err_"))
            return result
    raise RuntimeError(f"wrk printed no result:\n{stdout}")


def run_wrk(url: str, body_file: Path, headers: dict, connections: int, seconds: float) -> dict:
    """One wrk run (1 thread, `connections` keep-alive connections) posting the fixed body."""
    env = dict(
        os.environ,
        WRK_BODY=str(body_file),
        WRK_CONTENT_TYPE=headers.get("Content-Type", "application/json"),
        WRK_HDR_LEN=headers.get("Inference-Header-Content-Length", ""),
    )
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}")
    return parse_wrk(done.stdout)


def run_h2load(url: str, body_file: Path, connections: int, seconds: float, scratch: Path) -> dict:
    """One h2load run (1 thread, `connections` HTTP/2 connections, one call in flight on each, as
    wrk's connections) posting the framed gRPC request; latencies from its per-request log.

    h2load sees HTTP statuses, not gRPC's (which travel in trailers): the answer was checked with
    a gRPC client before, and the request counters of the server show whether every call
    succeeded (`errors` counts what h2load itself saw fail)."""
    log = scratch / "h2load.log"
    log.unlink(missing_ok=True)  # h2load appends to it
    argv = [
        "h2load", "-t1", f"-c{connections}", "-m1", f"-D{max(1, round(seconds))}",
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        "-d", str(body_file), "--log-file", str(log), url,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr}{done.stdout}")
    latencies, failed = [], 0
    for line in log.read_text().splitlines():
        _, status, micros = line.split("\t")
        if status == "200":
            latencies.append(int(micros) / 1000.0)
        else:
            failed += 1
    match = next(s for s in done.stdout.splitlines() if s.startswith("requests:"))
    errored = int(match.split(" failed, ")[1].split(" errored")[0])
    ordered = sorted(latencies)
    return {
        "rps": len(latencies) / max(1, round(seconds)),
        "p50_ms": ordered[len(ordered) // 2] if ordered else float("nan"),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0,
        "errors": failed + errored,
        "requests": len(latencies),
    }


# ---------------------------------------------------------------------------------------------
# Servers


@dataclass
class Server:
    """A started server: base `url` and the root process whose tree is measured."""

    url: str
    pid: int
    stop: object
    grpc_url: str = ""  # host:port of the gRPC service (tapeserve)


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code < 500:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server not up after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def gunicorn(
    app: str,
    *,
    workers: int,
    threads: int | None,
    worker_class: str,
    env: dict,
    scratch: Path,
    health: str,
) -> Iterator[Server]:
    """Gunicorn serving `app` (module:callable from benchmarks/servers) on a free loopback port.

    `threads` None leaves `--threads` out (worker classes without a thread pool, e.g. uvicorn's).
    """
    port = free_port()
    log = scratch / f"gunicorn-{port}.log"
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-b",
        f"127.0.0.1:{port}",
        "-w",
        str(workers),
        *(["--threads", str(threads)] if threads is not None else []),
        "-k",
        worker_class,
        "--keep-alive",
        "5",
        "--chdir",
        str(HERE / "servers"),
        app,
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, **env),
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def stop() -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    try:
        _wait_http(url + health, process, log)
        yield Server(url, process.pid, stop)
    finally:
        stop()


@contextlib.contextmanager
def tapeserve(
    repository: Path, *, workers: int, threads: int, worker_class: str | None = None
) -> Iterator[Server]:
    """`tapeserve serve` on the benchmark repository (via the test suite's launcher).

    `worker_class` ("async" or "gthread") is passed as `--worker-class`; None keeps the default.
    """
    extra = ["--log-level", "warning"]
    if worker_class is not None:
        extra += ["--worker-class", worker_class]
    running = start_server(repository, workers=workers, threads=threads, extra_args=extra)
    try:
        yield Server(running.url, running.process.pid, running.stop, running.grpc_url)
    finally:
        running.stop()


def write_repository(root: Path, models: dict[str, Path], max_batch_size: int) -> None:
    """`<name>_batch` (max_batch_size, no queue delay) and `<name>_nobatch` (0) per model."""
    for name, path in models.items():
        for suffix, config in (
            ("batch", {"max_batch_size": max_batch_size}),
            ("nobatch", {"max_batch_size": 0}),
        ):
            target = root / f"{name}_{suffix}" / "1" / "model.onnx"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
            (root / f"{name}_{suffix}" / "config.json").write_text(json.dumps(config))


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Case:
    """One configuration under load: which server, model, URL path, body and answer check."""

    server: str
    label: str
    model: str
    path: str
    body: bytes
    headers: dict
    kind: str  # "floor" | "flask" | "v2" | "grpc"


def check_case(url: str, case: Case, expected: np.ndarray, grpc_url: str = "") -> str:
    """Send the case's body once (to `grpc_url` for a gRPC case) and compare the answer with
    onnxruntime: "ok" or raises."""
    if case.kind == "grpc":
        got = grpc_outputs(grpc_bench.one_request(grpc_url, case.body[5:]))
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
            raise RuntimeError(f"{case.label}: wrong answer {got.ravel()[:4]}")
        return "matches onnxruntime"
    response = requests.post(url + case.path, data=case.body, headers=case.headers, timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"{case.label}: HTTP {response.status_code} {response.text[:300]}")
    if case.kind == "floor":
        if response.content != FLOOR_ANSWER:
            raise RuntimeError(f"{case.label}: not the fixed body: {response.content[:300]!r}")
        return "fixed body"
    if case.kind == "flask":
        got = flask_outputs(response.content)
    else:
        got = v2_outputs(response.content, {k.lower(): v for k, v in response.headers.items()})
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError(
            f"{case.label}: wrong answer {got.ravel()[:4]} != {expected.ravel()[:4]}"
        )
    return "matches onnxruntime"


def drive(
    servers: list[tuple[Server, list[Case]]],
    refs: dict,
    conns: list[int],
    args,
    scratch: Path,
    log,
) -> list[dict]:
    """Check every case once, then wrk each at each concurrency (warm-up, measured run).

    All servers run side by side and the cells are interleaved (per model and concurrency, every
    configuration in turn), so a drift in the load of a shared machine hits all of them alike.
    """
    samplers, checks, bodies = [], {}, {}
    for server, cases in servers:
        samplers.append(MemorySampler(server.pid))
        for case in cases:
            checks[case.label, case.model] = check_case(
                server.url, case, refs[case.model], server.grpc_url
            )
            bodies[case.label, case.model] = scratch / f"body-{len(bodies)}.bin"
            bodies[case.label, case.model].write_bytes(case.body)
    for sampler in samplers:
        sampler.start()
    rows = []
    plan = [
        (server, case, sampler)
        for (server, cases), sampler in zip(servers, samplers, strict=True)
        for case in cases
    ]
    try:
        for model in dict.fromkeys(case.model for _, case, _ in plan):
            for c in conns:
                for server, case, sampler in plan:
                    if case.model != model:
                        continue
                    body = bodies[case.label, case.model]
                    if case.kind == "grpc":
                        url = f"http://{server.grpc_url}{case.path}"
                        run_h2load(url, body, c, args.warmup, scratch)
                        result = run_h2load(url, body, c, args.duration, scratch)
                    else:
                        url = server.url + case.path
                        run_wrk(url, body, case.headers, c, args.warmup)
                        result = run_wrk(url, body, case.headers, c, args.duration)
                    row = {
                        "server": case.server,
                        "label": case.label,
                        "model": case.model,
                        "connections": c,
                        "body_bytes": len(case.body),
                        "check": checks[case.label, case.model],
                        **{k: result[k] for k in ("rps", "p50_ms", "p99_ms", "errors", "requests")},
                        "_sampler": sampler,
                    }
                    rows.append(row)
                    log(
                        f"{case.label:26s} {case.model} c={c:<3d} {row['rps']:9.1f} req/s  p50 "
                        f"{row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                        f"errors {row['errors']}"
                    )
    finally:
        for sampler in samplers:
            sampler.stop()
    for row in rows:
        sampler = row.pop("_sampler")
        row["peak_rss_mb"] = round(sampler.peak_rss_kb / 1024, 1)
        row["peak_pss_mb"] = round(sampler.peak_pss_kb / 1024, 1)
    return rows


def versions() -> dict:
    """Machine and package versions recorded with the results."""
    out = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
    }
    for package in (
        "onnxruntime",
        "onnxruntime-gpu",
        "numpy",
        "flask",
        "gunicorn",
        "uvicorn",
        "uvicorn-worker",
        "httptools",
        "uvloop",
        "orjson",
        "onnx",
        "tapeserve",
    ):
        with contextlib.suppress(importlib_metadata.PackageNotFoundError):
            out[package] = importlib_metadata.version(package)
    with contextlib.suppress(OSError):
        cpu = [
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        out["cpu"] = cpu[0].split(":", 1)[1].strip() if cpu else ""
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    out["wrk"] = (wrk.stdout or wrk.stderr).splitlines()[0] if (wrk.stdout or wrk.stderr) else ""
    return out


def cell(rows: list[dict], label: str, model: str, c: int) -> dict | None:
    return next(
        (r for r in rows if r["label"] == label and r["model"] == model and r["connections"] == c),
        None,
    )


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def fastest_floor(rows: list[dict], model: str, body_bytes: int, c: int = 64) -> dict | None:
    """The floor row (any floor server) with the most req/s at `c` connections and this body
    size: the true HTTP floor of this machine at that request size, whichever stack reached it."""
    floors = [
        r
        for r in rows
        if r["label"].startswith("floor ")
        and r["model"] == model
        and r["connections"] == c
        and r["body_bytes"] == body_bytes
    ]
    return max(floors, key=lambda r: r["rps"], default=None)


def targets(rows: list[dict], raw: dict, model: str = "cnn") -> list[tuple[str, str, str, bool]]:
    """The issue's targets for `model`: (target, measured, required, met)."""

    def rps(label: str, c: int) -> float | None:
        row = cell(rows, label, model, c)
        return row["rps"] if row else None

    def p50(label: str, c: int) -> float | None:
        row = cell(rows, label, model, c)
        return row["p50_ms"] if row else None

    flask64 = max(
        filter(None, [rps("flask sync 2w", 64), rps("flask gthread 1x8", 64)]), default=None
    )
    json64 = rps("tapeserve JSON batch", 64)
    bin64 = rps("tapeserve binary batch", 64)
    flask_p50 = min(
        filter(None, [p50("flask sync 2w", 1), p50("flask gthread 1x8", 1)]), default=None
    )
    ours_p50 = p50("tapeserve JSON batch", 1)
    bin_row = cell(rows, "tapeserve binary batch", model, 64)
    floor = fastest_floor(rows, model, bin_row["body_bytes"]) if bin_row else None
    raw_best = max(v["samples_per_s"] for v in raw[model].values()) if model in raw else None
    limits = [
        (value, name)
        for value, name in ((floor and floor["rps"], "floor"), (raw_best, "raw ORT best"))
        if value
    ]
    limit, limit_name = min(limits) if limits else (None, "")
    out = []
    if flask64 and json64:
        out.append(
            (
                f"{model} JSON c=64 vs best Flask app",
                f"{json64 / flask64:.2f}x",
                ">= 3x",
                json64 / flask64 >= 3,
            )
        )
    if json64 and bin64:
        out.append(
            (
                f"{model} binary vs JSON c=64",
                f"{bin64 / json64:.2f}x",
                ">= 1.5x",
                bin64 / json64 >= 1.5,
            )
        )
    if flask_p50 and ours_p50:
        out.append(
            (
                f"{model} c=1 p50 vs best Flask app",
                f"{ours_p50 / flask_p50:.2f}x",
                "<= 1.1x",
                ours_p50 / flask_p50 <= 1.1,
            )
        )
    grpc64, grpc_p50, bin_p50 = (
        rps("tapeserve gRPC batch", 64),
        p50("tapeserve gRPC batch", 1),
        (p50("tapeserve binary batch", 1)),
    )
    if grpc64 and bin64:
        out.append(
            (
                f"{model} gRPC vs HTTP binary c=64",
                f"{grpc64 / bin64:.2f}x",
                ">= 1x",
                grpc64 >= bin64,
            )
        )
    if grpc_p50 and bin_p50:
        out.append(
            (
                f"{model} gRPC vs HTTP binary c=1 p50",
                f"{grpc_p50:.2f} vs {bin_p50:.2f} ms ({grpc_p50 / bin_p50:.2f}x)",
                "<= 1x",
                grpc_p50 <= bin_p50,
            )
        )
    if bin64 and limit:
        if limit_name == "floor":
            measured = f"{bin64 / limit:.0%} of {floor['label']} ({limit:,.0f}/s, fastest floor)"
        else:
            chosen = f"{floor['label']}, {floor['rps']:,.0f} req/s" if floor else "none measured"
            measured = (
                f"{bin64 / limit:.0%} of raw ORT best ({limit:,.0f}/s); fastest floor: {chosen}"
            )
        out.append(
            (
                f"{model} binary c=64 vs min(raw ORT best, fastest floor)",
                measured,
                ">= 60%",
                bin64 / limit >= 0.6,
            )
        )
    return out


def markdown(rows: list[dict], raw: dict, info: dict, conns: list[int]) -> str:
    """The results document: raw ORT, the server table with ratios, targets, settings."""
    lines = ["# Serving benchmark", "", f"Run at {info['started']} UTC; {info['settings']}.", ""]
    lines += [
        "## Raw onnxruntime in-process (intra-op threads 2), samples/s (ms per call)",
        "",
        "| model | " + " | ".join(f"batch {b}" for b in RAW_BATCHES) + " |",
        "|---|" + "---|" * len(RAW_BATCHES),
    ]
    for model, per_batch in raw.items():
        lines.append(
            f"| {model} | "
            + " | ".join(
                f"{per_batch[b]['samples_per_s']:,.0f} ({per_batch[b]['ms_per_call']:.3f})"
                for b in RAW_BATCHES
            )
            + " |"
        )
    for model in dict.fromkeys(r["model"] for r in rows):
        base = "flask gthread 1x8"
        lines += [
            "",
            f"## {model}: req/s (p50 / p99 ms) [ratio to the Flask app gthread at the same "
            "concurrency]",
            "",
            "| server | body | "
            + " | ".join(f"c={c}" for c in conns)
            + " | errors | peak RSS / PSS |",
            "|---|---|" + "---|" * len(conns) + "---|---|",
        ]
        for label in dict.fromkeys(r["label"] for r in rows if r["model"] == model):
            cells, errors, first = [], 0, None
            for c in conns:
                row = cell(rows, label, model, c)
                if row is None:
                    cells.append("")
                    continue
                first = first or row
                errors += row["errors"]
                ref = cell(rows, base, model, c)
                cells.append(
                    f"{row['rps']:,.0f} ({row['p50_ms']:.1f} / {row['p99_ms']:.1f}) "
                    f"[{ratio(row['rps'], ref and ref['rps'])}]"
                )
            lines.append(
                f"| {label} | {first['body_bytes']:,} B | "
                + " | ".join(cells)
                + f" | {errors} | {first['peak_rss_mb']:.0f} / {first['peak_pss_mb']:.0f} MB |"
            )
        tgts = targets(rows, raw, model)
        if tgts:
            lines += [
                "",
                f"### {model}: targets",
                "",
                "| target | measured | required | met |",
                "|---|---|---|---|",
            ]
            lines += [f"| {t} | {m} | {r} | {'yes' if ok else 'NO'} |" for t, m, r, ok in tgts]
    lines += [
        "",
        "## Machine and versions",
        "",
        "```",
        json.dumps(info["versions"], indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, conns: list[int]) -> None:
    """Throughput and p99 against concurrency, one panel pair per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4.5 * len(models)), squeeze=False)
    for (left, right), model in zip(axes, models, strict=True):
        for label in dict.fromkeys(r["label"] for r in rows if r["model"] == model):
            pts = [cell(rows, label, model, c) for c in conns]
            xs = [c for c, p in zip(conns, pts, strict=True) if p]
            left.plot(xs, [p["rps"] for p in pts if p], marker="o", label=label)
            right.plot(xs, [p["p99_ms"] for p in pts if p], marker="o", label=label)
        left.set(xscale="log", xlabel="connections", ylabel="req/s", title=f"{model}: throughput")
        right.set(
            xscale="log",
            yscale="log",
            xlabel="connections",
            ylabel="p99 ms",
            title=f"{model}: p99 latency",
        )
        left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cases_for(model: str, x: np.ndarray) -> dict[str, list[Case]]:
    """The configurations of one model, grouped by the server that runs them."""
    v2_json, h_json = v2_body(x, False)
    v2_bin, h_bin = v2_body(x, True)
    flask_json = flask_body(x)
    ctype = {"Content-Type": "application/json"}
    path = f"/predict/{model}"
    out: dict[str, list[Case]] = {
        "floor": [
            Case("floor", "floor WSGI gthread JSON body", model, "/", v2_json, h_json, "floor"),
            Case("floor", "floor WSGI gthread binary body", model, "/", v2_bin, h_bin, "floor"),
        ],
        "floor asgi": [
            Case("floor asgi", "floor ASGI JSON body", model, "/", v2_json, h_json, "floor"),
            Case("floor asgi", "floor ASGI binary body", model, "/", v2_bin, h_bin, "floor"),
        ],
        "flask sync": [
            Case("flask sync", "flask sync 2w", model, path, flask_json, ctype, "flask")
        ],
        "flask gthread": [
            Case("flask gthread", "flask gthread 1x8", model, path, flask_json, ctype, "flask")
        ],
        "tapeserve": [],
        "tapeserve gthread": [],
    }
    for batching in ("batch", "nobatch"):
        infer = f"/v2/models/{model}_{batching}/infer"
        grpc = grpc_body(f"{model}_{batching}", x)
        out["tapeserve"] += [
            Case("tapeserve", f"tapeserve JSON {batching}", model, infer, v2_json, h_json, "v2"),
            Case("tapeserve", f"tapeserve binary {batching}", model, infer, v2_bin, h_bin, "v2"),
            Case("tapeserve", f"tapeserve gRPC {batching}", model, GRPC_PATH, grpc, {}, "grpc"),
        ]
    infer = f"/v2/models/{model}_batch/infer"
    out["tapeserve gthread"] += [
        Case("tapeserve gthread", f"tapeserve gthread {kind} batch", model, infer, body, head, "v2")
        for kind, body, head in (("JSON", v2_json, h_json), ("binary", v2_bin, h_bin))
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mlp", help="comma-separated: cnn, mlp")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per cell")
    parser.add_argument("--workers", type=int, default=2, help="tapeserve Gunicorn workers")
    parser.add_argument("--threads", type=int, default=16, help="tapeserve threads per worker")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated, any of: {', '.join(SERVERS)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    if shutil.which("h2load") is None and "tapeserve" in args.servers:
        sys.exit("h2load is not installed (apt-get install nghttp2-client; it drives gRPC)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    conns = [int(c) for c in args.connections.split(",")]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown:
        parser.error(f"unknown --servers {', '.join(unknown)}; choose from {', '.join(SERVERS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-serving-bench-"))
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())

    def log(text: str) -> None:
        print(text, flush=True)

    try:
        model_dir, repo = scratch / "models", scratch / "repository"
        model_dir.mkdir()
        paths, refs, cases = {}, {}, {s: [] for s in servers}
        raw = {}
        for name in models:
            paths[name] = model_dir / f"{name}.onnx"
            onnx.save(build_model(name), paths[name])
            x = sample(name)
            refs[name] = ort.InferenceSession(
                str(paths[name]), providers=["CPUExecutionProvider"]
            ).run(None, {"x": x})[0]
            for server, group in cases_for(name, x).items():
                if server in cases:
                    cases[server] += group
            raw[name] = raw_ort(paths[name], name)
            log(
                f"raw onnxruntime {name}: "
                + ", ".join(f"batch {b} {v['samples_per_s']:,.0f}/s" for b, v in raw[name].items())
            )
        write_repository(repo, paths, args.max_batch_size)
        launch = {
            "floor": lambda: gunicorn(
                "floor_app:app",
                workers=args.workers,
                threads=FLOOR_THREADS,
                worker_class="gthread",
                env={},
                scratch=scratch,
                health="/",
            ),
            "floor asgi": lambda: gunicorn(
                "floor_asgi:app",
                workers=args.workers,
                threads=None,
                worker_class=UVICORN_WORKER,
                env={},
                scratch=scratch,
                health="/",
            ),
            "flask sync": lambda: gunicorn(
                "flask_app:app",
                workers=2,
                threads=1,
                worker_class="sync",
                env={"BENCH_MODELS": str(model_dir)},
                scratch=scratch,
                health="/health",
            ),
            "flask gthread": lambda: gunicorn(
                "flask_app:app",
                workers=1,
                threads=8,
                worker_class="gthread",
                env={"BENCH_MODELS": str(model_dir)},
                scratch=scratch,
                health="/health",
            ),
            "tapeserve": lambda: tapeserve(repo, workers=args.workers, threads=args.threads),
            "tapeserve gthread": lambda: tapeserve(
                repo, workers=args.workers, threads=args.threads, worker_class="gthread"
            ),
        }
        with contextlib.ExitStack() as stack:
            started_servers = [
                (stack.enter_context(launch[server]()), cases[server])
                for server in servers
                if cases.get(server)
            ]
            rows = drive(started_servers, refs, conns, args, scratch, log)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = (
        f"wrk 1 thread, {args.warmup:g} s warm-up + {args.duration:g} s per cell; "
        f"tapeserve {args.workers} workers x {args.threads} threads, worker class "
        f"{DEFAULT_WORKER_CLASS} (the default: `tapeserve ...` rows) and gthread "
        f"(`tapeserve gthread ...` rows), max_batch_size {args.max_batch_size}, --log-level "
        "warning (no access log, as Triton by default); floors: Gunicorn gthread "
        f"{args.workers} workers x {FLOOR_THREADS} threads (WSGI) and Gunicorn "
        f"{UVICORN_WORKER} {args.workers} workers, httptools + uvloop (ASGI); Flask app "
        "Gunicorn sync 2 workers and gthread 1 x 8, intra-op threads 2"
    )
    info = {"started": started, "settings": settings, "versions": versions()}
    (args.out / "serving.json").write_text(
        json.dumps({**info, "raw_ort": raw, "rows": rows}, indent=1)
    )
    (args.out / "serving.md").write_text(markdown(rows, raw, info, conns))
    try:
        plot(rows, args.out / "serving.png", conns)
    except ImportError:
        log("matplotlib is not installed: no plot (pip install 'tapeserve[bench]')")
    log((args.out / "serving.md").read_text())


if __name__ == "__main__":
    main()
