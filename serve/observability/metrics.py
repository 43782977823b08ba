"""Prometheus metrics of tapeserve. The names and labels are a contract: dashboards depend on them.

Gunicorn runs several workers, so every metric lives in prometheus_client's multiprocess mode:
PROMETHEUS_MULTIPROC_DIR is set (fresh) by serve.gunicorn_conf before any worker starts, and
/metrics merges all workers' files with MultiProcessCollector. Gauges say how workers combine.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator

from serve.settings import normalize_multiproc_dir

normalize_multiproc_dir()  # before prometheus_client reads it: never metric files in the cwd

from prometheus_client import (  # noqa: E402
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess  # noqa: E402
from prometheus_client import values as _values  # noqa: E402

from serve.observability import gpu_metrics  # noqa: E402

#: This process's pid, refreshed in every forked child. prometheus_client asks for the pid on
#: every metric update (to notice a fork) and os.getpid() is a system call each time: about 5%
#: of the event loop's time under load went there.
_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def _process_id() -> int:
    return _pid


os.register_at_fork(after_in_child=_refresh_pid)
if _values.ValueClass is not _values.MutexValue:  # multiprocess mode: before any metric exists
    _values.ValueClass = _values.MultiProcessValue(process_identifier=_process_id)

#: 100 us to 10 s in 1-2.5-5 steps: a batch-1 onnxruntime call of a small model takes ~0.1 ms,
#: a request through HTTP ~1 ms, a queue under overload seconds; each decade gets 3 buckets.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

REQUESTS = Counter(
    "tapeserve_requests_total",
    "Inference requests answered, by HTTP status code.",
    ["model", "version", "protocol", "code"],
)
REQUEST_DURATION = Histogram(
    "tapeserve_request_duration_seconds",
    "Time from request received to response ready (decode, queue, compute, encode).",
    ["model", "version", "protocol"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "tapeserve_queue_duration_seconds",
    "Time a request waited in the batch queue before its batch started.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE_DURATION = Histogram(
    "tapeserve_compute_duration_seconds",
    "onnxruntime time per executed batch.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "tapeserve_batch_size",
    "Samples (first-dimension rows) per executed batch.",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
INFERENCE_SAMPLES = Counter(
    "tapeserve_inference_samples_total",
    "Samples executed (sum of batch sizes).",
    ["model", "version"],
)
INFERENCE_BATCHES = Counter(
    "tapeserve_inference_batches_total",
    "Batches executed (onnxruntime runs).",
    ["model", "version"],
)
QUEUE_DEPTH = Gauge(
    "tapeserve_queue_depth",
    "Requests waiting in the batch queue, summed over live workers.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
INFLIGHT_REQUESTS = Gauge(
    "tapeserve_inflight_requests",
    "Inference requests being handled now, summed over live workers.",
    multiprocess_mode="livesum",
)
REJECTED_REQUESTS = Counter(
    "tapeserve_rejected_requests_total",
    "Requests refused before running: queue_full, deadline, unavailable, loading.",
    ["model", "reason"],
)
MODEL_READY = Gauge(
    "tapeserve_model_ready",
    "1 when the model version is ready in every live worker, else 0.",
    ["model", "version", "device"],
    multiprocess_mode="livemin",
)
MODEL_LOAD_FAILURES = Counter(
    "tapeserve_model_load_failures_total",
    "Model loads that failed (config, checks, load probe, session, warm-up), per worker.",
    ["model"],
)
MODEL_LOAD_DURATION = Histogram(
    "tapeserve_model_load_duration_seconds",
    "Time to load a model version until ready (checks, sessions, warm-up), per worker.",
    ["model", "version"],
    buckets=LOAD_BUCKETS,
)


def multiprocess_dir() -> str | None:
    """The multiprocess directory in use, or None when running as a single plain process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


#: Gauges that describe a model version as served now. prometheus_client cannot remove a
#: labelled value in multiprocess mode, so the series of versions that are gone (retired by a
#: newer one, unloaded, deleted from the repository) are dropped when /metrics is rendered.
VERSION_GAUGES = ("tapeserve_model_ready", "tapeserve_queue_depth")


class _CurrentVersionsOnly:
    """Wraps a collector; keeps VERSION_GAUGES samples only for (model, version) in `current`."""

    def __init__(self, source, current: Collection[tuple[str, str]]) -> None:
        self.source, self.current = source, current

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name in VERSION_GAUGES:
                family.samples = [
                    s
                    for s in family.samples
                    if (s.labels.get("model"), s.labels.get("version")) in self.current
                ]
            yield family


def render(current: Collection[tuple[str, str]] | None = None) -> tuple[bytes, str]:
    """The exposition text of every worker (or this process alone) and its content type.

    `current`: the (model, version) pairs in the repository now; readiness and queue-depth
    series of other versions are left out. GPU gauges are read from NVML at scrape time and
    appended (absent without a GPU).
    """
    source = _multiprocess.MultiProcessCollector(None) if multiprocess_dir() else REGISTRY
    registry = CollectorRegistry()
    registry.register(source if current is None else _CurrentVersionsOnly(source, current))
    return generate_latest(registry) + gpu_metrics.exposition(), CONTENT_TYPE_LATEST


def samples(names: Collection[str]) -> Iterator:
    """Current samples (merged over every worker) of the metric families in `names`."""
    source = _multiprocess.MultiProcessCollector(None) if multiprocess_dir() else REGISTRY
    for family in source.collect():
        if family.name in names:
            yield from family.samples


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (called from Gunicorn's child_exit hook)."""
    if multiprocess_dir():
        _multiprocess.mark_process_dead(pid)
