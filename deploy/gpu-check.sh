#!/usr/bin/env bash
# GPU check for tapeserve: on an NVIDIA machine, verify that ONNX Runtime's CUDA provider is really
# active (also through tapeserve's own session loader), that GPU outputs match CPU outputs within
# fp32 tolerance, and report CPU and GPU throughput side by side. Elsewhere it skips with its reason.
#
#   deploy/gpu-check.sh                 # uses $PYTHON, else .venv/bin/python, else python3
#   deploy/gpu-check.sh --wheels DIR    # first installs onnxruntime-gpu, numpy, onnx (and any
#                                       # nvidia-* CUDA/cuDNN wheels) from DIR only, into a temp venv
#
# TAPESERVE_GPU_CHECK_SECONDS (2) and TAPESERVE_GPU_CHECK_BATCHES (1,32,256,1024) size the timing.
# Exit status: 0 passed or skipped (the last line says which), 1 failed, 2 usage error.
# It downloads nothing: the only installs are from a local wheel directory you give it.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done

# TAPESERVE_GPU_CHECK_FORCE=1 runs the checks anyway (to see how they fail without a GPU).
if [[ "${TAPESERVE_GPU_CHECK_FORCE:-0}" != 1 ]] && ! command -v nvidia-smi >/dev/null 2>&1 &&
  ! compgen -G '/dev/nvidia[0-9]*' >/dev/null; then
  echo "SKIP: no NVIDIA GPU here (no nvidia-smi on PATH, no /dev/nvidia* device)"
  exit 0
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
if [[ -n "$WHEELS" ]]; then
  [[ -d "$WHEELS" ]] || { echo "error: wheel directory $WHEELS does not exist" >&2; exit 2; }
  VENV="$(mktemp -d "${TMPDIR:-/tmp}/tapeserve-gpu-check.XXXXXX")"
  trap 'rm -rf "$VENV"' EXIT
  "$PY" -m venv "$VENV"
  shopt -s nullglob
  extra=("$WHEELS"/nvidia_*.whl)
  "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" onnxruntime-gpu numpy onnx "${extra[@]}"
  PY="$VENV/bin/python"
fi

command -v nvidia-smi >/dev/null 2>&1 &&
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /'

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" - <<'PY'
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL: {message}")


def mlp(path, sizes=(1024, 4096, 4096, 1000), seed=0):
    """A seeded fp32 MLP with a symbolic batch dimension (IR 10, opset 17)."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        gemm_out = out if out == "y" else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "gpu_check_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)


def session(path, providers):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=providers)


SECONDS = float(os.environ.get("TAPESERVE_GPU_CHECK_SECONDS", "2"))
BATCHES = [int(b) for b in os.environ.get("TAPESERVE_GPU_CHECK_BATCHES", "1,32,256,1024").split(",")]


def throughput(sess, batch, seconds=SECONDS):
    x = np.random.default_rng(1).standard_normal((batch, 1024), dtype=np.float32)
    sess.run(None, {"x": x})  # warm-up: kernel selection, allocations
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        sess.run(None, {"x": x})
        runs += 1
    return runs * batch / elapsed


print(f"onnxruntime {ort.__version__} ({getattr(ort.capi.build_and_package_info, 'package_name', '?')}, "
      f"CUDA {getattr(ort.capi.build_and_package_info, 'cuda_version', '?')}), numpy {np.__version__}")
print(f"available providers: {', '.join(ort.get_available_providers())}")
if CUDA not in ort.get_available_providers():
    print("FAIL: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    sys.exit(1)
if hasattr(ort, "preload_dlls"):
    try:
        ort.preload_dlls()  # CUDA/cuDNN from nvidia-* wheels, when installed
    except Exception as exc:
        print(f"note: preload_dlls: {exc}")

tmp = tempfile.mkdtemp(prefix="tapeserve-gpu-check-")
path = os.path.join(tmp, "mlp.onnx")
mlp(path)

# use_tf32=0: TF32 matmuls would differ from the CPU beyond fp32 tolerance by design.
gpu = session(path, [(CUDA, {"device_id": 0, "use_tf32": 0}), CPU])
cpu = session(path, [CPU])
active = gpu.get_providers()
print(f"GPU session providers: {', '.join(active)}")
if active[0] != CUDA:
    fail("the CUDA provider is not active: ONNX Runtime fell back to CPU "
         "(CUDA 13 / cuDNN 9 libraries missing or not on the loader path)")

rtol, atol = 1e-4, 1e-4
for batch in (1, 64):
    x = np.random.default_rng(batch).standard_normal((batch, 1024), dtype=np.float32)
    (want,) = cpu.run(None, {"x": x})
    (got,) = gpu.run(None, {"x": x})
    diff = float(np.max(np.abs(got - want)))
    ok = np.allclose(got, want, rtol=rtol, atol=atol)
    print(f"batch {batch:>3}: max |GPU - CPU| = {diff:.2e} (rtol {rtol}, atol {atol}) "
          f"{'ok' if ok else 'MISMATCH'}")
    if not ok:
        fail(f"GPU and CPU outputs differ at batch {batch} (max abs diff {diff:.3e})")

# tapeserve's own loader, as the server uses it with TAPESERVE_DEVICE=cuda.
try:
    from serve.lifecycle.runtime import create_session
except ImportError as exc:
    fail(f"cannot import tapeserve's serve.lifecycle.runtime ({exc}); run from a checkout with its deps")
else:
    try:
        served = create_session(path, "cuda", threads=1)
    except Exception as exc:  # DeviceError names what is missing
        fail(f"tapeserve's session loader refused device 'cuda': {exc}")
    else:
        print(f"tapeserve create_session(device='cuda'): provider {served.provider}, "
              f"device {served.device}")
        if served.provider != CUDA:
            fail("tapeserve's session loader did not run on CUDA")
        x = np.random.default_rng(7).standard_normal((8, 1024), dtype=np.float32)
        (want,) = cpu.run(None, {"x": x})
        (got,) = served.run({"x": x})
        if not np.allclose(got, want, rtol=rtol, atol=atol):
            fail("tapeserve's CUDA session output differs from the CPU output")

print()
print("| batch | CPU samples/s | GPU samples/s | GPU / CPU |")
print("|---:|---:|---:|---:|")
for batch in BATCHES:
    c, g = throughput(cpu, batch), throughput(gpu, batch)
    print(f"| {batch} | {c:,.0f} | {g:,.0f} | {g / c:.1f}x |")
print(f"(MLP 1024-4096-4096-1000 fp32, CPU threads: ORT default for {os.cpu_count()} CPUs)")
print()
if failures:
    print(f"GPU CHECK FAILED: {len(failures)} problem(s)")
    sys.exit(1)
print("GPU CHECK PASSED: CUDA provider active, GPU outputs match CPU within fp32 tolerance")
PY
