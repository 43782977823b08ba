"""GPU utilisation and memory as Prometheus gauges, read from NVML at scrape time.

Without an NVIDIA GPU (or without `nvidia-ml-py`) the collector yields nothing, so the series are
absent rather than a misleading 0. Values are read on each scrape, in whichever worker serves
it: they describe the whole device, so every worker would report the same numbers, and no
multiprocess bookkeeping is needed (custom collectors cannot live in multiprocess files).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("tapeserve.gpu")

UTILIZATION = "tapeserve_gpu_utilization_ratio"
MEMORY_USED = "tapeserve_gpu_memory_used_bytes"
MEMORY_TOTAL = "tapeserve_gpu_memory_total_bytes"


class GpuCollector(Collector):
    """Collects per-GPU utilisation and memory from NVML; empty when NVML is unavailable."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml = None  # the pynvml module once initialised
        self._tried = False

    def _init(self):
        with self._lock:
            if not self._tried:
                self._tried = True
                self._nvml = _open_nvml()
            return self._nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml = self._init()
        if nvml is None:
            return
        try:
            readings = _read_devices(nvml)
        except nvml.NVMLError as exc:
            log.warning("reading GPU metrics from NVML failed: %s", exc)
            return
        if not readings:
            return
        util = GaugeMetricFamily(
            UTILIZATION,
            "Fraction of the last sample period the GPU was busy (0-1).",
            labels=["gpu"],
        )
        used = GaugeMetricFamily(MEMORY_USED, "GPU memory in use, in bytes.", labels=["gpu"])
        total = GaugeMetricFamily(MEMORY_TOTAL, "GPU memory installed, in bytes.", labels=["gpu"])
        for index, busy, mem_used, mem_total in readings:
            util.add_metric([index], busy)
            used.add_metric([index], mem_used)
            total.add_metric([index], mem_total)
        yield from (util, used, total)


def _open_nvml():
    """Return the initialised pynvml module, or None (logged once) when there is no usable GPU."""
    try:
        import pynvml
    except ImportError:
        log.info("nvidia-ml-py is not installed: GPU metrics are not exported")
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() == 0:
            log.info("NVML found no GPU: GPU metrics are not exported")
            return None
    except pynvml.NVMLError as exc:
        log.info("NVML is not available (%s): GPU metrics are not exported", exc)
        return None
    return pynvml


def _read_devices(nvml) -> list[tuple[str, float, float, float]]:
    """(index, utilisation 0-1, memory used, memory total) for every visible GPU."""
    readings = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        readings.append((str(i), rates.gpu / 100.0, float(memory.used), float(memory.total)))
    return readings


#: A registry of its own: the /metrics handler appends it to the multiprocess (or default)
#: exposition, and NVML is only touched when a scrape asks.
REGISTRY = CollectorRegistry()
REGISTRY.register(GpuCollector())


def exposition() -> bytes:
    """The GPU families in Prometheus text format; empty without a usable GPU."""
    return generate_latest(REGISTRY)
