"""Loading the model kinds that are not ONNX files: Python models and ensembles.

Called by the registry (serve.lifecycle.registry) in place of session creation; fills the
ModelVersion the same way, so every front door serves them as it serves ONNX models.
"""

from __future__ import annotations

import threading

from serve.core.batcher import Batcher
from serve.lifecycle.config import ENSEMBLE, PYTHON, declared_specs
from serve.lifecycle.registry import ModelRegistry, ModelVersion, sample_inputs
from serve.pipelines.ensemble import Ensemble
from serve.pipelines.python_model import (
    PythonModelError,
    PythonModelInstance,
    PythonModelSpec,
    start_instances,
)


def _core(registry: ModelRegistry):
    """The inference core whose in-process API ensemble steps and BLS calls go through."""
    if registry.in_process is None:
        raise RuntimeError("this registry has no inference core to run other models through")
    return registry.in_process


class PythonModelsRefused(PermissionError):
    """A Python model in a server started without --allow-python-models."""

    verbatim = True


def load_pipeline_model(registry: ModelRegistry, mv: ModelVersion) -> None:
    """Load `mv` (a Python model or an ensemble); raises with the reason it cannot serve."""
    config = mv.config
    mv.inputs = declared_specs(config, "input")
    mv.outputs = declared_specs(config, "output")
    mv.batching = config.max_batch_size > 0
    mv.device = "cpu"
    if config.kind == ENSEMBLE:
        ensemble = Ensemble(registry, _core(registry), mv.name, config)
        mv.provider = "ensemble"
        mv.batcher = ensemble  # type: ignore[assignment]
        mv.ready_check = ensemble.check_ready
        warm_up(mv)
        return
    assert config.kind == PYTHON
    if not registry.allow_python_models:
        raise PythonModelsRefused(
            "Python models run code from the model repository: start the server with "
            "--allow-python-models (TAPESERVE_ALLOW_PYTHON_MODELS=1) to serve them"
        )
    spec = PythonModelSpec(
        mv.name, mv.version, mv.path.parent.parent, config, registry.python_model_memory_bytes
    )

    core = _core(registry)

    def bls(model, version, feeds, requested, deadline):
        version = None if version == -1 else str(version)
        outputs = core.infer(model, feeds, version=version, outputs=requested or None,
                             deadline=deadline)  # fmt: skip
        return list(outputs.items())

    try:
        instances = start_instances(spec, config.instance_count, bls)
    except PythonModelError as exc:
        raise PythonModelError(str(exc)) from None
    mv.provider = "python"
    mv.batcher = ProcessBatcher(
        instances,
        mv.name,
        str(mv.version),
        [i.run for i in instances],
        max_batch_size=config.max_batch_size,
        max_queue_delay_ms=config.max_queue_delay_ms,
        max_queue_size=config.max_queue_size,
        batching=mv.batching,
        per_request=True,
    )
    try:
        warm_up(mv)
    except Exception:
        mv.batcher.close()
        raise


def warm_up(mv: ModelVersion) -> None:
    """Run the config's warm-up samples (`"warmup": [...]`); each must succeed. A Python model
    or an ensemble gets no synthesized warm-up: zeros are rarely valid input to such code."""
    if not isinstance(mv.config.warmup, list):
        return
    for i, sample in enumerate(mv.config.warmup):
        try:
            mv.batcher.infer(sample_inputs(sample, mv.inputs))  # type: ignore[union-attr]
        except Exception as exc:
            raise RuntimeError(f"warm-up sample {i} failed: {exc}") from exc


class ProcessBatcher(Batcher):
    """A Batcher whose instances are processes: closing it finalizes them once the queued
    requests are answered."""

    def __init__(self, instances: list[PythonModelInstance], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instances = instances

    def close(self) -> None:
        super().close()
        threading.Thread(target=self._finalize, name=f"finalize-{self.model}", daemon=True).start()

    def _finalize(self) -> None:
        for thread in self._threads:
            thread.join()  # they end once the queue is empty
        for instance in self.instances:
            instance.close()  # waits for a request still running in its caller's thread
