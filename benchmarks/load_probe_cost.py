"""What vetting a model costs, beside what loading it costs anyway.

Per model version: the static checks (serve.lifecycle.checks), the load probe (a child forked from a
fork server with onnxruntime preloaded, serve.lifecycle.load_probe), the same probe as a fresh
interpreter (`python -m serve.lifecycle.load_probe`, the simple alternative), and the baseline:
creating the session and running the warm-up in-process, which every worker does for every version
anyway. Then the time a server takes from start to ready with and without --load-probe (runs
alternate, median taken).

    .venv/bin/python benchmarks/load_probe_cost.py [--models 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve.lifecycle.checks import check_model_file  # noqa: E402
from serve.lifecycle.load_probe import probe_model, synthesize_inputs  # noqa: E402
from tests.support.server import start_server  # noqa: E402


def mlp(seed: int) -> onnx.ModelProto:
    """784-512-512-10 MLP (the peers' model), batch dimension symbolic."""
    rng = np.random.default_rng(seed)
    sizes = [784, 512, 512, 10]
    nodes, inits, prev = [], [], "x"
    layers = list(zip(sizes, sizes[1:], strict=False))
    for i, (a, b) in enumerate(layers):
        inits.append(
            numpy_helper.from_array(rng.normal(0, 0.05, (a, b)).astype(np.float32), f"w{i}")
        )
        inits.append(numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"))
        last = i == len(layers) - 1
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], ["y" if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def in_process_load(path: Path) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, synthesize_inputs(session))


def fresh_interpreter_probe(path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "serve.lifecycle.load_probe", str(path)],
        check=True,
        capture_output=True,
    )


def server_ready_seconds(repo: Path, probe: bool) -> float:
    args = ["--load-probe" if probe else "--no-load-probe"]
    start = time.perf_counter()
    server = start_server(repo, workers=2, extra_args=args, timeout=300)
    elapsed = time.perf_counter() - start
    server.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        paths = []
        for i in range(args.models):
            folder = repo / f"mlp{i}" / "1"
            folder.mkdir(parents=True)
            onnx.save(mlp(i), folder / "model.onnx")
            paths.append(folder / "model.onnx")
        cold = timed(lambda: probe_model(paths[0]))  # starts the fork server
        rows = {
            "session + warm-up in-process (baseline)": [
                timed(lambda p=p: in_process_load(p)) for p in paths
            ],
            "static checks": [timed(lambda p=p: check_model_file(p)) for p in paths],
            "load probe (fork server)": [timed(lambda p=p: probe_model(p)) for p in paths],
            "load probe (fresh interpreter)": [
                timed(lambda p=p: fresh_interpreter_probe(p)) for p in paths
            ],
        }
        base = statistics.median(rows["session + warm-up in-process (baseline)"])
        print(f"\nPer model version, {args.models} x MLP 784-512-512-10 (2.2 MB), median of each")
        print("| step | median ms | x baseline |")
        print("|---|---|---|")
        for name, values in rows.items():
            med = statistics.median(values)
            print(f"| {name} | {med * 1000:.1f} | {med / base:.2f} |")
        print(f"| fork server start (once per process) | {cold * 1000:.0f} | {cold / base:.2f} |")

        ready = {True: [], False: []}
        for _ in range(args.repeats):
            for probe in (False, True):
                ready[probe].append(server_ready_seconds(repo, probe))
        off, on = statistics.median(ready[False]), statistics.median(ready[True])
        print(f"\nServer start to ready, {args.models} models, 2 workers, median of {args.repeats}")
        print("| server | seconds | x baseline |")
        print("|---|---|---|")
        print(f"| --no-load-probe (baseline) | {off:.2f} | 1.00 |")
        print(f"| --load-probe | {on:.2f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()
