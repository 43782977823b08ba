"""Micro-benchmark of the protocol codecs on a 784-float FP32 request (one MNIST-sized sample).

Each row times one operation three ways, side by side on the same machine and run:
- baseline: what a hand-written Flask view does (json + numpy, no checks),
- tapeserve/json: our codec with orjson switched off (standard library json only),
- tapeserve: our codec as shipped (orjson where exact, all checks on).
Ratios are baseline time / our time (above 1 = faster than the baseline). The binary encode
row's baseline is the JSON answer a hand-written app would send for the same tensor.

    .venv/bin/python benchmarks/protocol_codec.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import timeit
from collections.abc import Callable, Iterator

import numpy as np

from serve.protocol import jsondata
from serve.protocol.tfserving import decode_predict, encode_predict
from serve.protocol.types import TensorSpec
from serve.protocol.v2 import decode_infer, encode_infer

RNG = np.random.default_rng(0)
SAMPLE = RNG.standard_normal((1, 784)).astype(np.float32)
LOGITS = RNG.standard_normal((1, 10)).astype(np.float32)
SPEC = [TensorSpec("x", "FP32", (-1, 784))]


class _NoOrjson:
    """Stands in for orjson so every call takes the standard-library path."""

    JSONDecodeError = ValueError
    JSONEncodeError = TypeError
    OPT_SERIALIZE_NUMPY = 0

    @staticmethod
    def loads(_text):
        raise ValueError

    @staticmethod
    def dumps(_obj, option=0):
        raise TypeError


@contextlib.contextmanager
def stdlib_only() -> Iterator[None]:
    saved = jsondata.orjson
    jsondata.orjson = _NoOrjson  # type: ignore[assignment]
    try:
        yield
    finally:
        jsondata.orjson = saved


def _bodies() -> dict[str, bytes]:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 784]}
    json_body = json.dumps({"inputs": [{**tensor, "data": SAMPLE.ravel().tolist()}]}).encode()
    header = json.dumps(
        {"inputs": [{**tensor, "parameters": {"binary_data_size": SAMPLE.nbytes}}]}
    ).encode()
    tf_body = json.dumps({"instances": SAMPLE.tolist()}).encode()
    return {"json": json_body, "header": header, "binary": header + SAMPLE.tobytes(), "tf": tf_body}


def _cases(b: dict[str, bytes]) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """(name, baseline, tapeserve) per operation."""
    n_header = len(b["header"])

    def base_decode_json():
        doc = json.loads(b["json"])
        t = doc["inputs"][0]
        return np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])

    def base_decode_binary():
        doc = json.loads(b["binary"][:n_header])
        t = doc["inputs"][0]
        return np.frombuffer(b["binary"], np.float32, offset=n_header).reshape(t["shape"])

    def base_encode(arr):
        def run():
            out = {"name": "y", "datatype": "FP32", "shape": list(arr.shape)}
            out["data"] = arr.ravel().tolist()
            return json.dumps({"model_name": "m", "model_version": "1", "outputs": [out]}).encode()

        return run

    def base_decode_tf():
        return np.asarray(json.loads(b["tf"])["instances"], dtype=np.float32)

    def base_encode_tf():
        return json.dumps({"predictions": LOGITS.tolist()}).encode()

    return [
        ("V2 decode JSON 784 FP32", base_decode_json, lambda: decode_infer(b["json"], None)),
        (
            "V2 decode binary 784 FP32",
            base_decode_binary,
            lambda: decode_infer(b["binary"], n_header),
        ),
        (
            "V2 encode JSON 10 FP32",
            base_encode(LOGITS),
            lambda: encode_infer("m", "1", None, [("y", LOGITS, False)]),
        ),
        (
            "V2 encode JSON 784 FP32",
            base_encode(SAMPLE),
            lambda: encode_infer("m", "1", None, [("y", SAMPLE, False)]),
        ),
        (
            "V2 encode binary 784 (b: JSON)",
            base_encode(SAMPLE),
            lambda: encode_infer("m", "1", None, [("y", SAMPLE, True)]),
        ),
        ("TF decode instances 784", base_decode_tf, lambda: decode_predict(b["tf"], SPEC)),
        (
            "TF encode predictions 10",
            base_encode_tf,
            lambda: encode_predict({"y": LOGITS}, True),
        ),
    ]


def _time(fn: Callable[[], object], repeat: int) -> float:
    """Best per-call time in microseconds over `repeat` runs of an auto-sized loop."""
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bodies = _bodies()
    print(f"request bodies: JSON {len(bodies['json'])} B, binary {len(bodies['binary'])} B")
    head = f"{'operation':<28}{'baseline us':>12}{'ours/json us':>14}{'ours us':>10}"
    print(head + f"{'x json':>9}{'x ours':>9}")
    print("-" * (len(head) + 18))
    for name, baseline, ours in _cases(bodies):
        base = _time(baseline, args.repeat)
        with stdlib_only():
            plain = _time(ours, args.repeat)
        fast = _time(ours, args.repeat)
        print(
            f"{name:<28}{base:>12.1f}{plain:>14.1f}{fast:>10.1f}"
            f"{base / plain:>9.2f}{base / fast:>9.2f}"
        )


if __name__ == "__main__":
    main()
