"""GPU gauges: present with real values on an NVIDIA GPU, absent (never 0) without one."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serve import gpu_metrics


def _nvml_gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount()
    except Exception:
        return 0


def _scrape() -> str:
    registry = CollectorRegistry()
    gpu_metrics.register(registry)
    return generate_latest(registry).decode()


def test_without_a_gpu_the_gpu_series_are_absent_not_zero() -> None:
    if _nvml_gpu_count():
        pytest.skip("this machine has an NVIDIA GPU; the absent case needs one without")
    assert "tapeserve_gpu" not in _scrape()


def test_collector_can_join_several_registries() -> None:
    """The /metrics handler builds a fresh registry per scrape and registers the collector."""
    for _ in range(3):
        _scrape()


@pytest.mark.gpu
def test_with_a_gpu_every_gpu_reports_utilisation_and_memory() -> None:
    count = _nvml_gpu_count()
    if not count:
        pytest.skip("no NVIDIA GPU visible through NVML")
    text = _scrape()
    for i in range(count):
        for name in (gpu_metrics.UTILIZATION, gpu_metrics.MEMORY_USED, gpu_metrics.MEMORY_TOTAL):
            assert f'{name}{{gpu="{i}"}}' in text
    registry = CollectorRegistry()
    gpu_metrics.register(registry)
    total = registry.get_sample_value(gpu_metrics.MEMORY_TOTAL, {"gpu": "0"})
    used = registry.get_sample_value(gpu_metrics.MEMORY_USED, {"gpu": "0"})
    util = registry.get_sample_value(gpu_metrics.UTILIZATION, {"gpu": "0"})
    assert total > 0 and 0 <= used <= total and 0 <= util <= 1
