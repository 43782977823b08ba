"""GPU gauges: present with real values on an NVIDIA GPU, absent (never 0) without one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve.observability import gpu_metrics


def _nvml_gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0


def _scrape() -> str:
    return gpu_metrics.exposition().decode()


def test_without_a_gpu_the_gpu_series_are_absent_not_zero() -> None:
    if _nvml_gpu_count():
        pytest.skip("this machine has an NVIDIA GPU; the absent case needs one without")
    assert "tapeserve_gpu" not in _scrape()


@pytest.mark.gpu
def test_with_a_gpu_every_gpu_reports_utilisation_and_memory() -> None:
    count = _nvml_gpu_count()
    if not count:
        pytest.skip("no NVIDIA GPU visible through NVML")
    text = _scrape()
    for i in range(count):
        for name in (gpu_metrics.UTILIZATION, gpu_metrics.MEMORY_USED, gpu_metrics.MEMORY_TOTAL):
            assert f'{name}{{gpu="{i}"}}' in text
    registry = gpu_metrics.REGISTRY
    total = registry.get_sample_value(gpu_metrics.MEMORY_TOTAL, {"gpu": "0"})
    used = registry.get_sample_value(gpu_metrics.MEMORY_USED, {"gpu": "0"})
    util = registry.get_sample_value(gpu_metrics.UTILIZATION, {"gpu": "0"})
    assert total > 0 and 0 <= used <= total and 0 <= util <= 1


def test_readings_convert_nvml_percent_to_a_ratio_per_device() -> None:
    """NVML itself cannot run without a GPU; this pins the conversion on NVML-shaped answers."""

    class Nvml:
        def nvmlDeviceGetCount(self):
            return 2

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetUtilizationRates(self, handle):
            return SimpleNamespace(gpu=[37, 100][handle], memory=5)

        def nvmlDeviceGetMemoryInfo(self, handle):
            return SimpleNamespace(used=(handle + 1) * 2**30, total=80 * 2**30, free=0)

    assert gpu_metrics._read_devices(Nvml()) == [
        ("0", 0.37, float(2**30), float(80 * 2**30)),
        ("1", 1.0, float(2 * 2**30), float(80 * 2**30)),
    ]
