"""Server-side pipelines against the same work done by a client calling the models itself.

Two comparisons, each at 1 and 32 closed-loop clients, run in alternating rounds on one server
(2 workers, --allow-python-models) so that machine noise hits both sides alike:

- ONNX pair: the ensemble `onnx_pair` (add/mul ONNX model, then an MLP ONNX model) in one
  request, against a client that calls `am` and then `mlp` with its answer (two requests).
- Image -> label: a PNG as BYTES to `digits_pipeline` (Python preprocessing, then the digits
  CNN, top 3 labels by the classification extension), against a client that decodes and
  resizes the PNG itself (the same Pillow code) and calls `digits` with the 8x8 tensor (top 3
  labels asked the same way). The server-side pipeline's added cost per request is its p50
  minus that of the bare `digits` call on a ready tensor.

Every request uses the binary tensor extension. The client is Python threads on the same
cores as the server: a client that makes two requests per answer pays that too, as a real one
would. The load average is printed; rerun on a quiet machine for final figures.

    .venv/bin/python benchmarks/pipelines.py [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen.http import encode_request  # noqa: E402
from serve.protocol import binary  # noqa: E402
from tests.pipelines.conftest import onnx_ensemble  # noqa: E402
from tests.support.server import start_server  # noqa: E402

EXAMPLE = ROOT / "examples" / "pipelines" / "models"
TOP3 = [{"name": "SCORES", "parameters": {"classification": 3, "binary_data": True}}]


def body(inputs: dict[str, np.ndarray], outputs: list[dict] | None = None) -> tuple[bytes, dict]:
    data, headers = encode_request(inputs, binary_data=True)
    if outputs is None:
        return data, headers
    head_len = int(headers["Inference-Header-Content-Length"])
    head = json.loads(data[:head_len])
    head["outputs"] = outputs
    new_head = json.dumps(head).encode()
    headers = {**headers, "Inference-Header-Content-Length": str(len(new_head))}
    return new_head + data[head_len:], headers


def first_output(response: bytes, header_length: str | None) -> np.ndarray:
    """The first output of a binary-extension answer (FP32 or BYTES)."""
    head_len = int(header_length or len(response))
    head = json.loads(response[:head_len])
    out = head["outputs"][0]
    blob = response[head_len : head_len + out["parameters"]["binary_data_size"]]
    if out["datatype"] == "BYTES":
        return binary.deserialize_bytes(blob, "output").reshape(out["shape"])
    return np.frombuffer(blob, np.float32).reshape(out["shape"])


class Client:
    """One keep-alive connection: `post(model, body, headers)` -> (output array)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, model: str, payload: tuple[bytes, dict]) -> np.ndarray:
        self.conn.request("POST", f"/v2/models/{model}/infer", payload[0], payload[1])
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{model}: {response.status} {data[:300]!r}")
        return first_output(data, response.getheader("Inference-Header-Content-Length"))


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    image = Image.fromarray((pixels * 255).astype(np.uint8), "L").resize((64, 64), Image.NEAREST)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def client_preprocess(data: bytes) -> np.ndarray:
    """What digits_preprocess does, done by the client."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("L").resize((8, 8), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 0.5:
        pixels = 1.0 - pixels
    return pixels.reshape(1, 1, 8, 8)


def scenarios(images: list[bytes]) -> dict[str, Callable[[Client, int], None]]:
    rng = np.random.default_rng(0)
    a = rng.random((1, 16), dtype=np.float32)
    pair = body({"a": a, "b": a})
    digits_top3 = [{"name": "output", "parameters": {"classification": 3, "binary_data": True}}]
    pixels = client_preprocess(images[0])
    ready = body({"input": pixels}, digits_top3)

    def ensemble(client: Client, i: int) -> None:
        client.post("onnx_pair", pair)

    def two_calls(client: Client, i: int) -> None:
        s = client.post("am", pair)  # outputs sum first
        client.post("mlp", body({"x": np.ascontiguousarray(s)}))

    def pipeline(client: Client, i: int) -> None:
        image = np.array([[images[i % len(images)]]], dtype=object)
        client.post("digits_pipeline", body({"IMAGE": image}, TOP3))

    def client_side(client: Client, i: int) -> None:
        x = client_preprocess(images[i % len(images)])
        client.post("digits", body({"input": x}, digits_top3))

    def bare(client: Client, i: int) -> None:
        client.post("digits", ready)

    return {"ensemble onnx_pair": ensemble, "client: am then mlp": two_calls,
            "pipeline PNG->top3": pipeline, "client: Pillow + digits": client_side,
            "bare digits (8x8 ready)": bare}  # fmt: skip


def run_level(port: int, work: Callable[[Client, int], None], clients: int, seconds: float):
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def loop(k: int) -> None:
        client = Client(port)
        i = k
        try:
            while time.monotonic() < stop:
                started = time.perf_counter()
                work(client, i)
                latencies[k].append(time.perf_counter() - started)
                i += clients
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    return len(flat) / (time.monotonic() - started), statistics.median(flat) * 1000


def build_repository(root: Path) -> None:
    onnx_ensemble(root)
    for name in ("digits_preprocess", "digits_pipeline"):
        shutil.copytree(EXAMPLE / name, root / name)
    shutil.copytree((EXAMPLE / "digits").resolve(), root / "digits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,32")
    args = parser.parse_args()
    from engine.datasets import load_digits

    digits = load_digits(images=True)
    images = [png(digits.x_test[i, 0]) for i in range(64)]
    levels = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-pipelines-") as tmp:
        build_repository(Path(tmp))
        server = start_server(tmp, workers=2, extra_args=["--allow-python-models"])
        try:
            work = scenarios(images)
            for fn in work.values():  # warm every path once
                fn(Client(server.port), 0)
            results: dict[tuple[str, int], list[tuple[float, float]]] = {}
            for _ in range(args.rounds):
                for clients in levels:
                    for name, fn in work.items():
                        results.setdefault((name, clients), []).append(
                            run_level(server.port, fn, clients, args.seconds)
                        )
        finally:
            server.stop()
    load_after = os.getloadavg()
    med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v))
           for k, v in results.items()}  # fmt: skip
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs); {args.rounds} alternating rounds of {args.seconds:g} s, "
          "median of rounds")  # fmt: skip
    print(f"{'scenario':28} {'clients':>7} {'req/s':>8} {'p50 ms':>8}")
    for (name, clients), (rate, p50) in sorted(med.items(), key=lambda kv: (kv[0][1],)):
        print(f"{name:28} {clients:7d} {rate:8.0f} {p50:8.2f}")
    print()
    print(
        f"{'comparison':44} {'clients':>7} {'req/s ratio':>11} {'p50 ratio':>9} {'added p50':>10}"
    )
    pairs = [("ensemble onnx_pair", "client: am then mlp"),
             ("pipeline PNG->top3", "client: Pillow + digits"),
             ("pipeline PNG->top3", "bare digits (8x8 ready)")]  # fmt: skip
    for clients in levels:
        for ours, theirs in pairs:
            (r1, p1), (r2, p2) = med[(ours, clients)], med[(theirs, clients)]
            label = f"{ours} / {theirs}"
            print(f"{label:44} {clients:7d} {r1 / r2:10.2f}x {p1 / p2:8.2f}x {p1 - p2:7.2f} ms")


if __name__ == "__main__":
    main()
