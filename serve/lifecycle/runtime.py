"""Every onnxruntime call of the server: sessions, providers, device choice and thread sizing.

Sessions are created inside Gunicorn workers, after the fork: ORT thread pools and CUDA contexts
do not survive a fork.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from serve.protocol.datatypes import datatype_from_onnx
from serve.protocol.types import TensorSpec

log = logging.getLogger("tapeserve.runtime")

#: Set once CUDA failed to start under `auto`, so later models go straight to CPU.
_cuda_failed_in_auto = False

_INVALID_ARGUMENT = (_ort_state.InvalidArgument, _ort_state.InvalidGraph)
_ORT_ERRORS = (_ort_state.Fail, _ort_state.RuntimeException, _ort_state.EPFail, RuntimeError)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class InferenceError(RuntimeError):
    """onnxruntime refused or failed a run; `status` is 400 when the input values were at fault."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DeviceError(RuntimeError):
    """The requested device cannot be used (e.g. `cuda` asked for, but CUDA is not active)."""


def _cgroup_cpu_limit() -> float | None:
    """CPUs allowed by a cgroup v2 (`cpu.max`) or v1 (`cfs_quota_us`) quota, None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def intra_op_threads(workers: int, sessions_per_worker: int = 1) -> int:
    """Intra-op threads per session so that all workers' sessions together fit the usable CPUs."""
    return max(1, usable_cpus() // max(1, workers * sessions_per_worker))


def gpu_device_visible() -> bool:
    """Whether any NVIDIA device node exists (/dev/nvidia0.., or /dev/dxg under WSL)."""
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or (dev / "dxg").exists()


def check_device(device: str) -> None:
    """Refuse `cuda`/`cuda:N` up front when no GPU or no CUDA provider exists (no CUDA init).

    Called in the Gunicorn master, so a server asked for a GPU it cannot have fails at once
    instead of starting workers whose models all fail.
    """
    if not device.startswith("cuda"):
        return
    if not gpu_device_visible():
        raise DeviceError(f"device {device!r} requested but no NVIDIA GPU device is visible")
    if CUDA not in ort.get_available_providers():
        raise DeviceError(
            f"device {device!r} requested but this onnxruntime build has no CUDA provider "
            f"(available: {', '.join(ort.get_available_providers())})"
        )


def _fall_back_to_cpu(why: str) -> None:
    """Remember (per worker) that `auto` runs on CPU, and say so once in the log."""
    global _cuda_failed_in_auto
    if not _cuda_failed_in_auto:
        _cuda_failed_in_auto = True
        log.warning("device auto: %s; running on CPU", why)


def providers_for(device: str) -> list:
    """The provider list to ask ORT for on `device` (auto|cpu|cuda|cuda:N)."""
    if device == "cpu" or (device == "auto" and _cuda_failed_in_auto):
        return [CPU]
    device_id = int(device.split(":", 1)[1]) if ":" in device else 0
    if not gpu_device_visible():
        if device == "auto":
            _fall_back_to_cpu("no NVIDIA GPU device is visible to this process")
            return [CPU]
        raise DeviceError(f"device {device!r} requested but no NVIDIA GPU device is visible")
    if CUDA not in ort.get_available_providers():
        if device == "auto":
            _fall_back_to_cpu("this onnxruntime build has no CUDA provider")
            return [CPU]
        raise DeviceError(
            f"device {device!r} requested but this onnxruntime build has no CUDA provider "
            f"(available: {', '.join(ort.get_available_providers())})"
        )
    return [(CUDA, {"device_id": device_id}), CPU]


@functools.cache
def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from nvidia-* wheels when present, so the CUDA provider can start."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None or CUDA not in ort.get_available_providers():
        return
    try:
        preload()
    except Exception as exc:  # missing wheels: the CUDA provider will fail and be reported
        log.debug("onnxruntime.preload_dlls failed: %s", exc)


def _specs(args: list) -> list[TensorSpec]:
    specs = []
    for arg in args:
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        specs.append(TensorSpec(arg.name, datatype_from_onnx(arg.type), shape))
    return specs


def _as_text(name: str, arr: np.ndarray) -> np.ndarray:
    """ORT string tensors hold UTF-8 text and would store `bytes` as their repr: decode them."""
    flat = arr.ravel()
    out = np.empty(flat.shape, dtype=object)
    for i, value in enumerate(flat):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InferenceError(
                    f"input '{name}': element {i} is not valid UTF-8; onnxruntime string "
                    "tensors hold text",
                    400,
                ) from None
        out[i] = value
    return out.reshape(arr.shape)


@dataclass
class Session:
    """A loaded model: the ORT session, its signature and where it really runs."""

    inference: ort.InferenceSession
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    provider: str
    device: str
    #: The model file's metadata_props (producer, labels, input description, checkpoint hash...).
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._string_inputs = [s.name for s in self.inputs if s.datatype == "BYTES"]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Every output, in signature order; releases the GIL while ORT computes."""
        for name in self._string_inputs:
            if name in feeds:
                feeds = {**feeds, name: _as_text(name, feeds[name])}
        try:
            return self.inference.run(None, feeds)
        except _INVALID_ARGUMENT as exc:
            raise InferenceError(f"the model rejected the input: {exc}", 400) from None
        except _ORT_ERRORS as exc:
            raise InferenceError(f"inference failed: {exc}", 500) from None


def create_session(path: str | Path, device: str, threads: int) -> Session:
    """Load an ONNX model on `device`, checking that the provider really is the one in use.

    `auto` falls back to CPU with a warning when CUDA is not active; `cuda`/`cuda:N` raise
    DeviceError instead (a silent CPU fallback is how GPU deployments quietly run slow).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = providers_for(device)
    if device != "cpu" and len(providers) > 1:
        preload_cuda_libraries()
    session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    active = session.get_providers()
    if device != "cpu" and CUDA not in active:
        if device != "auto":
            raise DeviceError(
                f"device {device!r} requested but the CUDA provider is not active "
                f"(session providers: {', '.join(active)}); CUDA/cuDNN libraries are missing "
                "or no GPU is visible"
            )
        _fall_back_to_cpu(
            "the CUDA provider did not start (CUDA/cuDNN libraries missing or no GPU)"
        )
    provider = active[0]
    if provider == CUDA:
        options_used = session.get_provider_options().get(CUDA, {})
        where = f"cuda:{options_used.get('device_id', 0)}"
    else:
        where = "cpu"
    try:
        inputs = _specs(session.get_inputs())
        outputs = _specs(session.get_outputs())
    except ValueError as exc:
        raise ValueError(f"unsupported model signature: {exc}") from None
    return Session(session, inputs, outputs, provider, where, _metadata(session))


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    """metadata_props of the model, plus its producer when the file names one."""
    meta = session.get_modelmeta()
    found = dict(meta.custom_metadata_map)
    if meta.producer_name and "producer" not in found:
        found["producer"] = meta.producer_name
    return found
