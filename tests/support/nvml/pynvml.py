"""A stand-in for nvidia-ml-py's `pynvml`, the NVML boundary, for tests on machines without a GPU.

NVML is the one part that needs the NVIDIA driver and a GPU; everything above it (the device
probe, the worker-per-GPU default, the /metrics gauges, gpu-check's parsing) runs for real against
this module. Put this folder first on PYTHONPATH to give it to a server process, or install it in
sys.modules in-process. The machine it describes comes from TAPESERVE_FAKE_NVML:

    "gpus=2,driver=580.82.07"      two GPUs
    "error=12"                     nvmlInit fails with that NVML error code (12: library not found,
                                   9: driver not loaded, 4: no permission)

Each GPU reports utilisation 10*(i+1) percent and (i+1) GiB used of 16 GiB; a last part
"processes=11:300+12:310" lists pid:MiB compute processes on GPU 0.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_UNINITIALIZED = 1

_MESSAGES = {
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(_MESSAGES.get(value, f"NVML error {value}"))
        self.value = value


def _machine() -> dict[str, str]:
    spec = os.environ.get("TAPESERVE_FAKE_NVML", "gpus=1,driver=580.82.07")
    return dict(part.split("=", 1) for part in spec.split(",") if "=" in part) | {
        "processes": spec.split("processes=", 1)[1] if "processes=" in spec else ""
    }


_initialised = False


def nvmlInit() -> None:
    global _initialised
    machine = _machine()
    if "error" in machine:
        raise NVMLError(int(machine["error"]))
    _initialised = True


def nvmlShutdown() -> None:
    global _initialised
    _initialised = False


def _check() -> dict[str, str]:
    if not _initialised:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    return _machine()


def nvmlSystemGetDriverVersion() -> str:
    return _check().get("driver", "580.82.07")


def nvmlDeviceGetCount() -> int:
    return int(_check().get("gpus", "1"))


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if not 0 <= index < nvmlDeviceGetCount():
        raise NVMLError(2)
    return index


def nvmlDeviceGetUtilizationRates(handle: int):
    _check()
    return SimpleNamespace(gpu=10 * (handle + 1), memory=5)


def nvmlDeviceGetMemoryInfo(handle: int):
    _check()
    return SimpleNamespace(used=(handle + 1) * 2**30, total=16 * 2**30, free=0)


def nvmlDeviceGetComputeRunningProcesses(handle: int):
    pairs = _check()["processes"]
    if handle != 0 or not pairs:
        return []
    return [
        SimpleNamespace(pid=int(pid), usedGpuMemory=int(mib) * 2**20)
        for pid, mib in (pair.split(":") for pair in pairs.split("+"))
    ]
