"""Where a Python model's code runs: in the worker, or in a child process per model instance.

Per `execute` call of the same model.py, p50 and p99 over interleaved rounds:
- in-worker: the TritonPythonModel instance called directly in this process (what running
  model.py in the Gunicorn worker would cost: no isolation);
- child process: serve.pipelines.python_model (the socket round trip and pickling of inputs and
  outputs, the model's process answering).
Payloads: a 1x4 FP32 request (add_sub), a 1x3x224x224 FP32 image tensor, and a ~20 kB PNG as
BYTES through the example's preprocessing model.

    .venv/bin/python benchmarks/python_model_ipc.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serve.lifecycle.config import parse_config  # noqa: E402
from serve.pipelines import triton_python_backend_utils as pb_utils  # noqa: E402
from serve.pipelines.python_model import PythonModelInstance, PythonModelSpec  # noqa: E402

MODELS = ROOT / "tests" / "pipelines" / "models"
EXAMPLE = ROOT / "examples" / "pipelines" / "models"


def in_worker(model_dir: Path, config: dict):
    sys.modules["triton_python_backend_utils"] = pb_utils
    spec = importlib.util.spec_from_file_location(f"m_{model_dir.name}", model_dir / "1/model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    if hasattr(model, "initialize"):
        args = PythonModelSpec(model_dir.name, 1, model_dir, parse_config(config)).args(0)
        model.initialize(args)

    def call(feeds: dict) -> list:
        request = pb_utils.InferenceRequest(
            inputs=[pb_utils.Tensor(n, a) for n, a in feeds.items()]
        )
        return model.execute([request])

    return call


def child(model_dir: Path, config: dict):
    spec = PythonModelSpec(model_dir.name, 1, model_dir, parse_config(config))
    instance = PythonModelInstance(spec, 0, bls=None)
    instance.start()
    return lambda feeds: instance.run([feeds], None), instance


def png_bytes() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    image = {"X": np.zeros((1, 3, 224, 224), np.float32)}
    chw = {"data_type": "TYPE_FP32", "dims": [3, 224, 224]}
    image_config = {"backend": "python", "max_batch_size": 8,
                    "input": [{"name": "X", **chw}], "output": [{"name": "Y", **chw}]}  # fmt: skip
    png = png_bytes()
    cases = [
        ("add_sub 1x4 FP32", MODELS / "add_sub",
         {"INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.ones((1, 4), np.float32)},
         None),
        ("1x3x224x224 FP32 (588 kB)", MODELS / "double", image, image_config),
        (f"PNG as BYTES ({len(png) // 1000} kB)", EXAMPLE / "digits_preprocess",
         {"IMAGE": np.array([[png]], dtype=object)}, None),
    ]  # fmt: skip
    load = os.getloadavg()
    print(
        f"load: {load[0]:.2f} {load[1]:.2f} (1 and 5 min), "
        f"{os.cpu_count()} CPUs, {args.calls} calls x {args.rounds} interleaved rounds"
    )
    print(
        f"{'payload':28} {'in-worker p50':>14} {'child p50':>10} {'added p50':>10} "
        f"{'in-worker p99':>14} {'child p99':>10}"
    )
    for label, model_dir, feeds, config in cases:
        config = config or json.loads((model_dir / "config.json").read_text())
        direct = in_worker(model_dir, config)
        remote, instance = child(model_dir, config)
        times: dict[str, list[float]] = {"direct": [], "child": []}
        for _ in range(args.rounds):
            for name, call in (("direct", direct), ("child", remote)):
                for _ in range(args.calls // args.rounds):
                    started = time.perf_counter()
                    call(feeds)
                    times[name].append(time.perf_counter() - started)
        instance.close()
        p50 = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        p99 = {k: float(np.percentile(v, 99)) * 1e6 for k, v in times.items()}
        print(f"{label:28} {p50['direct']:11.0f} us {p50['child']:7.0f} us "
              f"{p50['child'] - p50['direct']:7.0f} us {p99['direct']:11.0f} us "
              f"{p99['child']:7.0f} us")  # fmt: skip


if __name__ == "__main__":
    main()
