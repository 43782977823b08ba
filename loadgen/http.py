"""`tapeserve bench`: a closed-loop load generator for any KServe V2 (Open Inference) server.

Each of `concurrency` client threads keeps one HTTP/1.1 keep-alive connection and sends the same
request again as soon as the previous answer arrived (like Triton's `perf_analyzer` in its default
closed-loop mode and `wrk`). The input tensors come from the model's metadata (`GET
/v2/models/{m}`: name, datatype, shape with the batch dimension set to `--batch-size`) or from a
sample file. The first answer of every concurrency level is checked (status 200, every output
present) before the measured window starts.

The client is Python, so its own threads share the GIL and the machine's cores with whatever
else runs there; `docs/performance.md` compares it with wrk on the same server. For the highest
rates run wrk (the body written by `--save-body`) or several `tapeserve bench` processes.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serve.protocol import binary, datatypes, jsondata

#: Latency percentiles reported for every level.
PERCENTILES = (50, 90, 95, 99)


@dataclass
class Target:
    """Where requests go: `host`, `port`, the infer `path`, and https or not."""

    host: str
    port: int
    base_path: str
    https: bool = False

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL must look like http://host:port, got {url!r}")
        https = parts.scheme == "https"
        return cls(
            parts.hostname, parts.port or (443 if https else 80), parts.path.rstrip("/"), https
        )

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return kind(self.host, self.port, timeout=timeout)


def model_path(model: str, version: str = "") -> str:
    """`/v2/models/{model}[/versions/{version}]` with both parts URL-quoted."""
    path = f"/v2/models/{urllib.parse.quote(model, safe='')}"
    return path + (f"/versions/{urllib.parse.quote(version, safe='')}" if version else "")


def request_json(target: Target, method: str, path: str, timeout: float = 30.0) -> dict:
    """One request whose answer is JSON; raises RuntimeError naming the status and error text."""
    conn = target.connect(timeout)
    try:
        conn.request(method, target.base_path + path)
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise RuntimeError(f"cannot reach {target.host}:{target.port}: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"{method} {path} answered {response.status}: {body[:500]!r}")
    return json.loads(body)


def inputs_from_metadata(
    metadata: dict, batch_size: int = 1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random tensors matching the model's declared inputs.

    A leading -1 (the batch dimension) becomes `batch_size`; another -1 cannot be guessed and
    raises ValueError asking for a sample file.
    """
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in metadata.get("inputs", []):
        name, datatype, shape = spec["name"], spec["datatype"], list(spec["shape"])
        if shape and shape[0] == -1:
            shape[0] = batch_size
        if any(dim < 0 for dim in shape):
            raise ValueError(
                f"input {name!r} has shape {shape} with a variable dimension besides the batch: "
                "give a sample input with --input-file"
            )
        if datatype == "BYTES":
            arrays[name] = np.full(shape, b"tapeserve", dtype=object)
            continue
        dtype = datatypes.numpy_dtype(datatype)
        if dtype.kind == "f":
            arrays[name] = rng.random(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[name] = rng.integers(0, 2, shape).astype(bool)
        else:
            arrays[name] = rng.integers(0, 10, shape).astype(dtype)
    if not arrays:
        raise ValueError("the model's metadata declares no inputs")
    return arrays


def inputs_from_file(path: Path) -> dict[str, np.ndarray]:
    """Inputs from a .npy file (the model's only input, named by the caller), a .npz file (one
    array per input name) or a V2 JSON request body (`{"inputs": [{name, shape, datatype, data}]}`).
    A .npy file yields the name "" (filled in from the metadata)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {"": np.load(path, allow_pickle=False)}
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    body = json.loads(path.read_bytes())
    arrays = {}
    for item in body.get("inputs", []):
        dtype = object if item["datatype"] == "BYTES" else datatypes.numpy_dtype(item["datatype"])
        arrays[item["name"]] = np.asarray(item["data"], dtype=dtype).reshape(item["shape"])
    if not arrays:
        raise ValueError(f"{path}: no inputs found (expected .npy, .npz or a V2 JSON body)")
    return arrays


def encode_request(inputs: dict[str, np.ndarray], binary_data: bool) -> tuple[bytes, dict]:
    """A V2 infer body and its headers: JSON tensors, or the binary tensor extension."""
    header: dict = {"inputs": []}
    chunks: list[bytes] = []
    for name, arr in inputs.items():
        datatype = "BYTES" if arr.dtype == object else datatypes.datatype_of(arr.dtype)
        entry: dict = {"name": name, "shape": list(arr.shape), "datatype": datatype}
        if binary_data:
            data = bytes(binary.tensor_bytes(arr, datatype))
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = jsondata.tensor_value(arr, flat=True)
        header["inputs"].append(entry)
    if not binary_data:
        return jsondata.dumps(header), {"Content-Type": "application/json"}
    header["parameters"] = {"binary_data_output": True}
    head = jsondata.dumps(header)
    return head + b"".join(chunks), {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


def check_answer(status: int, headers: dict, body: bytes, metadata: dict | None) -> None:
    """Raise RuntimeError unless the answer is a 200 carrying every declared output."""
    if status != 200:
        raise RuntimeError(f"the server answered {status}: {body[:500]!r}")
    length = headers.get("inference-header-content-length")
    head = jsondata.loads(body[: int(length)] if length is not None else body, "answer")
    outputs = {item["name"]: item for item in head.get("outputs", [])}
    if not outputs:
        raise RuntimeError(f"the answer has no outputs: {body[:500]!r}")
    for spec in (metadata or {}).get("outputs", []):
        if spec["name"] not in outputs:
            raise RuntimeError(f"the answer lacks output {spec['name']!r}: {body[:500]!r}")


@dataclass
class LevelResult:
    """One concurrency level: completed requests, errors, throughput and latency (ms)."""

    concurrency: int
    duration_s: float
    requests: int
    errors: int
    throughput: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    first_error: str = ""


def summarize(
    concurrency: int,
    duration: float,
    latencies: Sequence[float],
    errors: int,
    first_error: str = "",
) -> LevelResult:
    """Throughput and latency percentiles of one level from per-request latencies (seconds)."""
    lat = np.asarray(latencies, dtype=np.float64) * 1000.0
    stats = {}
    if lat.size:
        stats = {f"p{p}": round(float(np.percentile(lat, p)), 3) for p in PERCENTILES}
        stats["mean"] = round(float(lat.mean()), 3)
        stats["max"] = round(float(lat.max()), 3)
    return LevelResult(
        concurrency,
        round(duration, 3),
        int(lat.size),
        errors,
        round(lat.size / duration, 2) if duration > 0 else 0.0,
        stats,
        first_error,
    )


class _Client(threading.Thread):
    """One keep-alive connection sending the same request in a loop until `stop` is set."""

    def __init__(
        self,
        target: Target,
        path: str,
        body: bytes,
        headers: dict,
        timeout: float,
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.target, self.path, self.body, self.headers = target, path, body, headers
        self.timeout, self.stop = timeout, stop
        self.measuring = False
        self.latencies: list[float] = []
        self.errors = 0
        self.first_error = ""
        self.sent = 0

    def run(self) -> None:
        conn = self.target.connect(self.timeout)
        clock = time.perf_counter
        while not self.stop.is_set():
            start = clock()
            try:
                conn.request("POST", self.path, self.body, self.headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
                problem = "" if ok else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as exc:
                ok, problem = False, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = self.target.connect(self.timeout)
            elapsed = clock() - start
            self.sent += 1
            if not self.measuring:
                continue
            if ok:
                self.latencies.append(elapsed)
            else:
                self.errors += 1
                self.first_error = self.first_error or problem
        conn.close()


def run_level(
    target: Target,
    path: str,
    body: bytes,
    headers: dict,
    concurrency: int,
    duration: float,
    warmup: float,
    timeout: float = 30.0,
    tick: Callable[[float, int], None] | None = None,
) -> LevelResult:
    """Drive `concurrency` connections: `warmup` seconds unmeasured, then `duration` measured.

    The measured window also lasts until one request is answered (bounded by `timeout`): a
    server slower than the window (a loaded machine) gets its true figure, not 0 requests/s.
    `tick(elapsed_s, requests_so_far)` is called about twice a second during the measured window
    (progress display).
    """
    stop = threading.Event()
    clients = [_Client(target, path, body, headers, timeout, stop) for _ in range(concurrency)]
    for client in clients:
        client.start()
    time.sleep(warmup)
    for client in clients:
        client.measuring = True
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < duration or not (
        any(c.latencies or c.errors for c in clients) or elapsed > duration + timeout
    ):
        time.sleep(min(0.5, max(0.01, duration - elapsed)))
        if tick is not None:
            tick(min(time.perf_counter() - start, duration), sum(len(c.latencies) for c in clients))
    for client in clients:
        client.measuring = False
    measured = time.perf_counter() - start
    stop.set()
    for client in clients:
        client.join(timeout + 5)
    latencies = [value for client in clients for value in client.latencies]
    errors = sum(client.errors for client in clients)
    first_error = next((c.first_error for c in clients if c.first_error), "")
    return summarize(concurrency, measured, latencies, errors, first_error)


def one_request(
    target: Target, path: str, body: bytes, headers: dict, timeout: float = 30.0
) -> tuple[int, dict, bytes]:
    """Send one request; returns (status, lower-cased headers, body)."""
    conn = target.connect(timeout)
    try:
        conn.request("POST", path, body, headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def format_table(results: Sequence[LevelResult]) -> str:
    """A markdown table: concurrency, req/s, latency percentiles, errors."""
    cols = ["concurrency", "req/s", *(f"p{p} ms" for p in PERCENTILES), "errors"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [str(r.concurrency), f"{r.throughput:.1f}"]
        cells += [f"{r.latency_ms.get(f'p{p}', math.nan):.2f}" for p in PERCENTILES]
        cells.append(str(r.errors))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: Sequence[LevelResult], path: Path, title: str) -> None:
    """Throughput and p50/p99 latency against concurrency, as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conc = [r.concurrency for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(conc, [r.throughput for r in results], marker="o")
    left.set(xscale="log", xlabel="concurrent connections", ylabel="requests/s", title="throughput")
    for pct in ("p50", "p99"):
        right.plot(conc, [r.latency_ms.get(pct, math.nan) for r in results], marker="o", label=pct)
    right.set(
        xscale="log", yscale="log", xlabel="concurrent connections", ylabel="ms", title="latency"
    )
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def results_document(settings: dict, results: Sequence[LevelResult]) -> dict:
    """What `--json` writes: the settings and one entry per concurrency level."""
    return {"settings": settings, "results": [asdict(r) for r in results]}
