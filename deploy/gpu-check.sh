#!/usr/bin/env bash
# GPU check for tapeserve (`make gpu-check`): on a machine with an NVIDIA GPU, runs in order
#   1. the CUDA libraries (deploy/cuda_libraries.py, the driver's libcuda.so.1 required),
#   2. the CUDA provider really active in an ONNX Runtime session,
#   3. CPU/GPU agreement on the bundled models (and the repositories in
#      TAPESERVE_GPU_CHECK_REPOSITORIES, e.g. a generated model zoo),
#   4. a throughput table at batch 1/8/32: tapeserve serve on CPU and GPU, 1 and 2 workers,
#   5. GPU memory per worker (NVML), 6. the NVML gauges in /metrics,
#   7. the CUDA image under podman or docker with the NVIDIA runtime doing the same,
# then prints one summary table. Elsewhere it prints SKIP and exits 0.
#
#   deploy/gpu-check.sh [--install-cuda | --wheels DIR] [--device cuda:N] [--image IMAGE]
#                       [--engine podman|docker] [--no-container]
#
# --install-cuda  first pip-installs the `cuda` extra (CUDA 13 and cuDNN 9 from NVIDIA's wheels)
#                 into the Python's environment ($PYTHON, else .venv/bin/python, else python3)
# --wheels DIR    the same from a local wheel directory only (hosts without an index)
# --image IMAGE   the CUDA image for step 7 (default: build it with VARIANT=cuda)
# TAPESERVE_GPU_CHECK_SECONDS (3) and TAPESERVE_GPU_CHECK_BATCHES (1,8,32) size the throughput table.
# Exit status: 0 passed or skipped (the last line says which), 1 a step failed, 2 usage error.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
INSTALL=""
WHEELS=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --install-cuda) INSTALL=index; shift ;;
    --wheels) WHEELS="${2:?--wheels needs a directory}"; INSTALL=wheels; shift 2 ;;
    --device|--image|--engine) ARGS+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --no-container) ARGS+=("$1"); shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
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
if [[ -n "$INSTALL" ]]; then
  # The `cuda` extra of pyproject.toml, with what is installed pinned (nothing is upgraded).
  REQUIREMENT="$("$PY" -c 'import re, sys
try:
    import tomllib
    print(*tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]["cuda"])
except ModuleNotFoundError:  # Python 3.10
    print(re.search(r"^cuda = \[\"([^\"]+)\"\]", open(sys.argv[1]).read(), re.M).group(1))' \
    "$ROOT/pyproject.toml")"
  FROM=()
  if [[ "$INSTALL" == wheels ]]; then
    [[ -d "$WHEELS" ]] || { echo "error: wheel directory $WHEELS does not exist" >&2; exit 2; }
    FROM=(--no-index --find-links "$WHEELS")
  fi
  "$PY" -m pip install -q "${FROM[@]}" -c <("$PY" -m pip list --format=freeze) "$REQUIREMENT"
fi

command -v nvidia-smi >/dev/null 2>&1 &&
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader |
  sed 's/^/GPU: /'

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" "$ROOT/deploy/gpu_check.py" "${ARGS[@]}"
