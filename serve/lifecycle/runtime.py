"""Every onnxruntime call of the server: sessions, providers, device choice and thread sizing.

Sessions are created inside Gunicorn workers, after the fork: ORT thread pools and CUDA contexts
do not survive a fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from serve.lifecycle import shared_weights, signature
from serve.protocol.datatypes import datatype_from_onnx
from serve.protocol.types import TensorSpec

log = logging.getLogger("tapeserve.runtime")

#: Set once CUDA failed to start under `auto`, so later models go straight to CPU.
_cuda_failed_in_auto = False

_INVALID_ARGUMENT = (_ort_state.InvalidArgument, _ort_state.InvalidGraph)
_ORT_ERRORS = (_ort_state.Fail, _ort_state.RuntimeException, _ort_state.EPFail, RuntimeError)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


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


@dataclass(frozen=True)
class GpuProbe:
    """What the NVIDIA driver reports, read through NVML.

    NVML does not initialise CUDA, so the Gunicorn master may ask before it forks workers (a
    child forked after CUDA was initialised cannot use CUDA).
    """

    #: Driver version; None when the driver cannot be used (then `problem` says why).
    driver: str | None
    problem: str
    #: GPUs this process may use: the driver's count with CUDA_VISIBLE_DEVICES applied.
    devices: int


#: NVML error codes (nvml.h) that say the driver itself is missing or unusable.
_NVML_LIBRARY_NOT_FOUND, _NVML_DRIVER_NOT_LOADED, _NVML_NO_PERMISSION = 12, 9, 4


def _driver_problem(exc: Exception) -> str:
    code = getattr(exc, "value", None)
    if code == _NVML_LIBRARY_NOT_FOUND:
        return (
            "the NVIDIA driver is missing: its libraries (libnvidia-ml.so.1, libcuda.so.1) are "
            "not installed, or not mounted into this container (docker run --gpus all, podman "
            "run --device nvidia.com/gpu=all, with the NVIDIA Container Toolkit)"
        )
    if code == _NVML_DRIVER_NOT_LOADED:
        return "the NVIDIA driver is installed but not loaded (no nvidia kernel module)"
    if code == _NVML_NO_PERMISSION:
        return "this process may not use the NVIDIA driver (no permission on /dev/nvidia*)"
    return f"the NVIDIA driver cannot be used ({exc})"


def visible_gpus(count: int, cuda_visible_devices: str | None) -> int:
    """GPUs CUDA would enumerate: CUDA_VISIBLE_DEVICES lists indices or GPU-/MIG- UUIDs and
    stops at the first invalid entry; unset means all of them, empty means none."""
    if cuda_visible_devices is None:
        return count
    seen: list[str] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isdigit() and int(entry) < count:
            key = str(int(entry))
        elif entry.upper().startswith(("GPU-", "MIG-")):
            key = entry.upper()
        else:
            break
        if key in seen:
            break
        seen.append(key)
    return min(len(seen), count)


def probe_gpus() -> GpuProbe:
    """Ask the driver (through NVML) whether it is there and how many GPUs it offers."""
    try:
        import pynvml
    except ImportError:  # a dependency; without it only the device nodes can tell
        nodes = len(list(Path("/dev").glob("nvidia[0-9]*")))
        why = "" if nodes else "no NVIDIA GPU device is visible (no /dev/nvidia*)"
        return GpuProbe("unknown" if nodes else None, why, nodes)
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuProbe(None, _driver_problem(exc), 0)
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        version = version.decode() if isinstance(version, bytes) else str(version)
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError as exc:
        return GpuProbe(None, _driver_problem(exc), 0)
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    devices = visible_gpus(count, os.environ.get("CUDA_VISIBLE_DEVICES"))
    problem = "" if devices else _no_device(version, count)
    return GpuProbe(version, problem, devices)


def _no_device(version: str, count: int) -> str:
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if count and hidden is not None:
        return (
            f"the NVIDIA driver ({version}) has {count} GPU(s) but CUDA_VISIBLE_DEVICES="
            f"{hidden!r} hides them all"
        )
    return f"the NVIDIA driver ({version}) is loaded but no GPU device is present"


@functools.cache
def gpus() -> GpuProbe:
    """This process's probe, taken once (the GPUs of a host do not come and go)."""
    return probe_gpus()


def device_index(device: str) -> int | None:
    """N of `cuda:N`; None for auto, cpu and cuda."""
    return int(device.split(":", 1)[1]) if ":" in device else None


def _gpu_unusable(device: str, device_id: int, probe: GpuProbe) -> str | None:
    """Why `device` on GPU `device_id` cannot run here, from the probe alone (None: it can)."""
    if probe.driver is None or probe.devices == 0:
        return probe.problem or "no NVIDIA GPU is visible"
    if device_id >= probe.devices:
        return (
            f"GPU {device_id} does not exist: {probe.devices} GPU(s) are visible "
            f"(cuda:0..cuda:{probe.devices - 1})"
        )
    if CUDA not in ort.get_available_providers():
        return (
            "this onnxruntime build has no CUDA provider (available: "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu"
        )
    return None


def check_device(device: str, probe: GpuProbe | None = None) -> None:
    """Refuse `cuda`/`cuda:N` up front, saying whether the driver or a device is missing.

    Called in the Gunicorn master (NVML only, no CUDA initialisation), so a server asked for a
    GPU it cannot have fails at once instead of starting workers whose models all fail.
    """
    if not device.startswith("cuda"):
        return
    why = _gpu_unusable(device, device_index(device) or 0, probe or gpus())
    if why:
        raise DeviceError(f"device {device!r} requested but {why}")


def default_workers(device: str, probe: GpuProbe | None = None) -> int:
    """Gunicorn workers when none are asked for: one per GPU on a GPU (each worker owns its
    GPU's CUDA context and weights), two on CPU (docs/performance.md)."""
    if device == "cpu" or device_index(device) is not None:
        return 2 if device == "cpu" else 1
    probe = probe or gpus()
    if probe.driver is not None and probe.devices and CUDA in ort.get_available_providers():
        return probe.devices
    return 2 if device == "auto" else 1


WORKER_GPU_VAR = "TAPESERVE_WORKER_GPU"


def worker_gpu() -> int | None:
    """The GPU the Gunicorn master gave this worker (serve.workers.gunicorn_conf), if any."""
    value = os.environ.get(WORKER_GPU_VAR, "")
    return int(value) if value.isdigit() else None


def resolve_device(
    server_device: str, model_device: str | None, cuda_device_id: int | None
) -> tuple[str, int]:
    """(device kind, GPU index) for one model: the model's own `device`, else its CUDA
    `device_id`, else the server's `--device cuda:N`, else this worker's GPU, else GPU 0."""
    device = model_device or server_device
    kind = device.split(":", 1)[0]
    index = device_index(model_device or "")
    if index is None:
        index = cuda_device_id
    if index is None:
        index = device_index(server_device)
    if index is None:
        index = worker_gpu()
    return kind, index or 0


def _fall_back_to_cpu(why: str) -> None:
    """Remember (per worker) that `auto` runs on CPU, and say so once in the log."""
    global _cuda_failed_in_auto
    if not _cuda_failed_in_auto:
        _cuda_failed_in_auto = True
        log.warning("device auto: %s; running on CPU", why)


def _ort_options(options: dict) -> dict[str, str]:
    """Provider options as onnxruntime takes them: strings, booleans as 1/0."""
    return {k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in options.items()}


def providers_for(
    device: str,
    device_id: int | None = None,
    cuda_options: dict | None = None,
    tensorrt_options: dict | None = None,
) -> list:
    """The provider list to ask ORT for on `device` (auto|cpu|cuda|cuda:N) and GPU `device_id`
    (`cuda:N` wins): TensorRT first when the model asks for it, then CUDA, then CPU."""
    if device == "cpu" or (device == "auto" and _cuda_failed_in_auto):
        return [CPU]
    index = device_index(device)
    device_id = index if index is not None else (device_id or 0)
    why = _gpu_unusable(device, device_id, gpus())
    if why:
        if device == "auto":
            _fall_back_to_cpu(why)
            return [CPU]
        raise DeviceError(f"device 'cuda:{device_id}' requested but {why}")
    providers: list = [(CUDA, _ort_options({**(cuda_options or {}), "device_id": device_id}))]
    if tensorrt_options is not None:
        if TENSORRT not in ort.get_available_providers():
            raise DeviceError(
                "config.json asks for TensorRT but this onnxruntime build has no TensorRT provider"
            )
        trt = _ort_options({**tensorrt_options, "device_id": device_id})
        providers.insert(0, (TENSORRT, trt))
    return [*providers, CPU]


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
    #: Every input's and output's shape as onnxruntime reports it: ints, symbolic dimension
    #: names, None (serve.lifecycle.batch_dims reads which outputs follow the batch).
    dims: dict[str, list] = field(default_factory=dict)

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


def create_session(
    path: str | Path,
    device: str,
    threads: int,
    *,
    device_id: int | None = None,
    cuda_options: dict | None = None,
    tensorrt_options: dict | None = None,
    shared_weights: str | Path | None = None,
) -> Session:
    """Load an ONNX model on `device`, checking that the provider really is the one in use.

    `auto` falls back to CPU with a warning when CUDA is not active; `cuda`/`cuda:N` raise
    DeviceError instead (a silent CPU fallback is how GPU deployments quietly run slow). The
    provider options come from the model's config.json (`cuda`, `tensorrt`); TensorRT, when a
    model asks for it, must start as well (under `auto` the model then runs on CUDA, warned).
    ZipMap outputs are served as the probability tensors they map (serve.lifecycle.signature).
    With `shared_weights` (a folder every worker of the server sees), a CPU session loads the
    optimized copy of the model kept there, so all workers map one copy of the weights
    (serve.lifecycle.shared_weights).
    """
    path = Path(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    providers = providers_for(device, device_id, cuda_options, tensorrt_options)
    if len(providers) > 1:
        preload_cuda_libraries()
    try:
        source, extra_metadata = signature.rewritten(path)
    except signature.UnsupportedSignature as exc:
        raise ValueError(f"unsupported model signature: {exc}") from None
    model: str | bytes = source if source is not None else str(path)
    if shared_weights is not None and providers == [CPU]:
        model = _shared_copy(path, Path(shared_weights), options, source) or model
    session = ort.InferenceSession(model, sess_options=options, providers=providers)
    active = session.get_providers()
    if len(providers) > 1 and CUDA not in active:
        if device != "auto":
            named = device if ":" in device else f"cuda:{device_id or 0}"
            raise DeviceError(
                f"device {named!r} requested but the CUDA provider is not active "
                f"(session providers: {', '.join(active)}): CUDA/cuDNN libraries are missing "
                "or do not match the driver (deploy/cuda_libraries.py names which)"
            )
        _fall_back_to_cpu(
            "the CUDA provider did not start (CUDA/cuDNN libraries missing or not matching "
            "the driver)"
        )
    elif tensorrt_options is not None and len(providers) > 1 and TENSORRT not in active:
        why = "the TensorRT provider did not start (TensorRT's libnvinfer missing?)"
        if device != "auto":
            raise DeviceError(f"config.json asks for TensorRT but {why}")
        log.warning("device auto: %s; running on CUDA", why)
    provider = active[0]
    if provider in (CUDA, TENSORRT):
        options_used = session.get_provider_options().get(provider, {})
        where = f"cuda:{options_used.get('device_id', 0)}"
    else:
        where = "cpu"
    try:
        inputs = _specs(session.get_inputs())
        outputs = _specs(session.get_outputs())
    except ValueError as exc:
        raise ValueError(f"unsupported model signature: {exc}") from None
    dims = {
        arg.name: list(arg.shape or []) for arg in (*session.get_inputs(), *session.get_outputs())
    }
    metadata = {**_metadata(session), **extra_metadata}
    return Session(session, inputs, outputs, provider, where, metadata, dims)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_freed_memory() -> None:
    """Give the heap memory freed while loading back to the system (glibc `malloc_trim`).

    Creating a session frees tens of MB of scratch (initializers read, then replaced by the
    memory-mapped pre-packed ones); glibc keeps freed memory in the process, where it counts
    against every worker. Other C libraries: nothing to do."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _shared_copy(
    path: Path, folder: Path, options: ort.SessionOptions, source: bytes | None
) -> str | None:
    """The optimized copy every worker maps, or None (load the original) for a small model or
    when the copy cannot be written."""
    try:
        if source is not None or shared_weights.model_bytes(path) < shared_weights.MIN_SHARED_BYTES:
            return None
        return str(shared_weights.optimized_copy(path, folder, options))
    except Exception as exc:  # disk full, a graph onnxruntime cannot serialize, ...
        log.warning("%s: weights not shared between workers (%s); loading it as it is", path, exc)
        return None


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    """metadata_props of the model, plus its producer when the file names one."""
    meta = session.get_modelmeta()
    found = dict(meta.custom_metadata_map)
    if meta.producer_name and "producer" not in found:
        found["producer"] = meta.producer_name
    return found
