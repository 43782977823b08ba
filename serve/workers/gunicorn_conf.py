"""Gunicorn configuration for tapeserve, driven by TAPESERVE_* environment variables.

Start by hand exactly as `tapeserve serve` does:

    gunicorn -c python:serve.gunicorn_conf 'serve.app:create_app()'

No `preload_app`: ONNX Runtime sessions are created in each worker after the fork. The master
prepares a fresh PROMETHEUS_MULTIPROC_DIR before any worker starts and drops the live gauges of
workers that exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

from serve.lifecycle.runtime import (
    WORKER_GPU_VAR,
    DeviceError,
    check_device,
    default_workers,
    device_index,
    gpus,
)
from serve.settings import WORKER_CLASSES, Settings, normalize_multiproc_dir
from serve.workers import readiness as worker_readiness
from serve.workers.ports import check_port_free

try:
    _settings = Settings.from_env()
    check_device(_settings.device)
except (ValueError, DeviceError) as exc:
    sys.exit(f"tapeserve: {exc}")
if not _settings.workers:
    _settings.workers = default_workers(_settings.device)
try:
    check_port_free(_settings.host, _settings.grpc_port)
except OSError as exc:
    sys.exit(f"tapeserve: gRPC port {_settings.grpc_port}: {exc.strerror or exc}")
os.environ.update(_settings.to_env())  # workers read the same settings, defaults resolved

# Multiprocess metrics: set before prometheus_client is imported anywhere (it reads it once);
# an empty value counts as unset (it would put the metric files in the current directory).
_own_metrics_dir = normalize_multiproc_dir() is None
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tapeserve-metrics-")

# A folder the workers share for model control (load-probe verdicts, explicit requests).
_own_runtime_dir = "TAPESERVE_RUNTIME_DIR" not in os.environ
if _own_runtime_dir:
    os.environ["TAPESERVE_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="tapeserve-run-")

bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else
        f"{_settings.host}:{_settings.port}"]  # fmt: skip
workers = _settings.workers
# async: the thread pool of the Flask endpoints (serve/http/fast_path.py)
threads = _settings.threads
worker_class = WORKER_CLASSES[_settings.worker_class]  # both drain (serve/workers/drain.py)
preload_app = False
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5
loglevel = _settings.log_level
accesslog = None
errorlog = "-"
proc_name = "tapeserve"

# Gunicorn 27 opens a control socket at one fixed path per user: a second server would clash.
if _settings.control_socket:
    control_socket = _settings.control_socket
else:
    control_socket_disable = True


def on_starting(server) -> None:
    """Start from a clean metrics directory: stale files from an old run would be summed in.

    Only prometheus_client's own `*.db` files are removed, whatever folder the variable names.
    """
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))
    server.log.info(
        "tapeserve: model repository %s, device %s, %d worker(s) x %d thread(s), %s",
        _settings.model_repository,
        _settings.device,
        _settings.workers,
        _settings.threads,
        _settings.worker_class,
    )


def _spread_over_gpus() -> int:
    """GPUs the workers take turns on: all visible ones for `cuda`/`auto` without an index."""
    if _settings.device == "cpu" or device_index(_settings.device) is not None:
        return 0
    probe = gpus()
    return probe.devices if probe.driver is not None else 0


def pre_fork(server, worker) -> None:
    """Give each worker a GPU slot, the lowest one no live worker holds (a replacement worker
    takes its predecessor's GPU)."""
    taken = {getattr(w, "tapeserve_gpu", None) for w in server.WORKERS.values()}
    count = _spread_over_gpus()
    worker.tapeserve_gpu = next((i for i in range(count) if i not in taken), None)
    if worker.tapeserve_gpu is None and count:
        worker.tapeserve_gpu = len(server.WORKERS) % count  # more workers than GPUs


def post_fork(server, worker) -> None:
    """In the worker: the GPU its models default to (serve.lifecycle.runtime.worker_gpu)."""
    if getattr(worker, "tapeserve_gpu", None) is not None:
        os.environ[WORKER_GPU_VAR] = str(worker.tapeserve_gpu)
        server.log.info("tapeserve: worker %s runs its models on GPU %d", worker.pid,
                        worker.tapeserve_gpu)  # fmt: skip


def child_exit(server, worker) -> None:
    from serve.observability.metrics import mark_process_dead

    mark_process_dead(worker.pid)
    worker_readiness.forget(os.environ.get("TAPESERVE_RUNTIME_DIR"), worker.pid)


def worker_exit(server, worker) -> None:
    from serve.workers.drain import exit_after_drain

    exit_after_drain(worker)


def on_exit(server) -> None:
    if _own_runtime_dir:
        shutil.rmtree(os.environ["TAPESERVE_RUNTIME_DIR"], ignore_errors=True)
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
