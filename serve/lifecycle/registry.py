"""Model lifecycle inside one worker: scan the repository, load, warm up, track state, look up.

Loading runs in a background thread so that liveness answers at once; readiness turns true
when every model version reached a final state (READY or UNAVAILABLE).
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serve.core.batcher import Batcher
from serve.core.executor import Executor
from serve.core.padding import PaddingPlan
from serve.lifecycle import batch_dims, runtime
from serve.lifecycle.config import ENSEMBLE, ONNX, ModelConfig
from serve.lifecycle.repository import scan_repository
from serve.observability import metrics
from serve.pipelines.classification import output_labels
from serve.protocol.datatypes import numpy_dtype
from serve.protocol.types import TensorSpec
from serve.workers import readiness as worker_readiness

log = logging.getLogger("tapeserve.models")

#: Folder of the server's runtime folder holding the optimized copies every worker maps.
SHARED_WEIGHTS_DIR = "weights"


class State(str, enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


class ModelNotFound(LookupError):
    """No such model or version in the repository (404)."""


class ModelNotReady(RuntimeError):
    """The model exists but cannot serve now (503); `loading` says whether retrying helps."""

    def __init__(self, message: str, loading: bool) -> None:
        super().__init__(message)
        self.loading = loading


@dataclass
class ModelVersion:
    """One loaded (or loading, or failed) version of a model."""

    name: str
    version: int
    path: Path
    config: ModelConfig
    state: State = State.LOADING
    reason: str = ""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    provider: str = ""
    device: str = ""
    #: The model file's metadata_props (shown in /v2/models/{m}/config and on the status page).
    metadata: dict[str, str] = field(default_factory=dict)
    batching: bool = False
    #: How requests of different lengths are padded into one batch (pad_variable_length_inputs).
    padding: PaddingPlan | None = field(default=None, compare=False, repr=False)
    #: What runs its requests: a Batcher over onnxruntime sessions for an ONNX model, the
    #: Ensemble or the Python model's process batcher for the others (serve.pipelines).
    batcher: Executor | None = None
    #: Class labels per output name, for the classification extension (serve.pipelines).
    labels: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)
    #: Raises ModelNotReady while something the version needs is not ready (an ensemble's steps).
    ready_check: Callable[[], None] | None = field(default=None, compare=False, repr=False)
    #: Loaded by model control beside a serving version: failing leaves the model serving, so
    #: it does not fail strict readiness (serve.lifecycle.control).
    update: bool = False
    #: Requests that resolved this version and are not answered yet (`hold`/`release`); once
    #: `retired`, no request can hold it any more and model control closes it when they are done.
    users: int = field(default=0, compare=False, repr=False)
    retired: bool = field(default=False, compare=False, repr=False)
    _users_changed: threading.Condition = field(
        default_factory=lambda: threading.Condition(threading.Lock()), compare=False, repr=False
    )

    def hold(self) -> bool:
        """Count a request in; False when the version was retired since the lookup (look again)."""
        with self._users_changed:
            if self.retired:
                return False
            self.users += 1
            return True

    def release(self) -> None:
        with self._users_changed:
            self.users -= 1
            if not self.users:
                self._users_changed.notify_all()

    def retire(self, timeout: float) -> bool:
        """Refuse new holders, then wait up to `timeout` s for the current ones; True when idle."""
        with self._users_changed:
            self.retired = True
            return self._users_changed.wait_for(lambda: not self.users, timeout)

    @property
    def max_batch_size(self) -> int:
        """The batch limit clients see: 0 when the model does not batch."""
        return self.config.max_batch_size if self.batching else 0


@dataclass
class Model:
    """A model folder: its config, or the error that made the whole model unavailable."""

    name: str
    config: ModelConfig
    error: str | None
    versions: dict[int, ModelVersion]

    @property
    def state(self) -> State:
        if self.error:
            return State.UNAVAILABLE
        states = {v.state for v in self.versions.values()}
        if State.READY in states:
            return State.READY
        return State.LOADING if State.LOADING in states else State.UNAVAILABLE

    @property
    def reason(self) -> str:
        if self.error:
            return self.error
        return "; ".join(f"version {v.version}: {v.reason}" for v in self.failed_versions())

    def failed_versions(self) -> list[ModelVersion]:
        return [v for v in self.versions.values() if v.state is State.UNAVAILABLE]


def _warmup_inputs(specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Zeros (empty strings for BYTES) of the declared shapes, variable dimensions set to 1."""
    feeds = {}
    for spec in specs:
        shape = tuple(1 if d < 0 else d for d in spec.shape)
        dtype = numpy_dtype(spec.datatype)
        feeds[spec.name] = (
            np.full(shape, b"", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype)
        )
    return feeds


def sample_inputs(sample: dict[str, Any], specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """A warm-up sample of config.json as session feeds, typed by the model's declared inputs."""
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(sample) - set(by_name))
    if unknown:
        raise ValueError(
            f"unknown input(s) {', '.join(unknown)}; model inputs: {', '.join(by_name)}"
        )
    feeds = {}
    for name, tensor in sample.items():
        dtype = numpy_dtype(by_name[name].datatype)
        data = tensor["data"]
        if dtype.kind == "O":
            data = np.array(
                [d.encode() if isinstance(d, str) else d for d in np.ravel(data)], object
            )
        feeds[name] = np.asarray(data, dtype=dtype).reshape(tensor["shape"])
    return feeds


class ModelRegistry:
    """Every model of the repository in this worker, loaded in the background by `start()`."""

    def __init__(
        self,
        repository: str | Path,
        device: str = "auto",
        workers: int = 1,
        runtime_dir: str | None = None,
    ) -> None:
        self.repository = Path(repository)
        self.device = device
        self.workers = workers
        #: Shared by the Gunicorn workers; readiness waits for all of them
        #: (serve.workers.readiness).
        self.runtime_dir = runtime_dir
        self.models: dict[str, Model] = {}
        self.error: str | None = None
        self._loaded = threading.Event()
        #: Called with a model file before any session is created; raises to refuse it
        #: (serve.lifecycle.control: static checks and the load probe).
        self.vet: Callable[[Path], None] | None = None
        #: Python models run only when the server was started with --allow-python-models;
        #: each process gets this address-space limit (0: none).
        self.allow_python_models = False
        self.python_model_memory_bytes = 0
        #: The inference core over this registry (serve.core.inference.InferenceCore), set by
        #: serve.app: ensemble steps and Python models' BLS calls run other models through it.
        self.in_process: Any = None

    # -- loading -------------------------------------------------------------------------------

    def start(self) -> threading.Thread:
        """Scan now (cheap) and load every version in a daemon thread."""
        try:
            entries = scan_repository(self.repository)
        except OSError as exc:
            self.error = str(exc)
            log.error("%s", exc)
            entries = []
        for entry in entries:
            versions = {
                v: ModelVersion(entry.name, v, path, entry.config)
                for v, path in entry.versions.items()
            }
            self.models[entry.name] = Model(entry.name, entry.config, entry.error, versions)
            failures = metrics.MODEL_LOAD_FAILURES.labels(entry.name)  # exported as 0 until one
            if entry.error:
                failures.inc()
                log.error("model %s is unavailable: %s", entry.name, entry.error)
        thread = threading.Thread(target=self._load_all, name="model-loader", daemon=True)
        thread.start()
        return thread

    def _load_all(self) -> None:
        try:  # ensembles last: they are checked against their steps' loaded signatures
            models = sorted(self.models.values(), key=lambda m: m.config.kind == ENSEMBLE)
            for model in models:
                for mv in model.versions.values():
                    self._load(mv)
        finally:
            self._loaded.set()
            worker_readiness.mark_loaded(self.runtime_dir)

    def _load(self, mv: ModelVersion) -> None:
        config = mv.config
        gpu = config.cuda.get("device_id", (config.tensorrt or {}).get("device_id"))
        kind, device_id = runtime.resolve_device(self.device, config.device, gpu)
        device = config.device or self.device  # the ready gauge's label until it runs somewhere
        started = time.monotonic()
        try:
            if config.kind == ONNX:
                self._load_onnx(mv, kind, device_id)
            else:  # Python models and ensembles (serve.pipelines)
                from serve.pipelines.loading import load_pipeline_model

                load_pipeline_model(self, mv)
            mv.labels = output_labels(mv.path.parent.parent, config, [s.name for s in mv.outputs])
            for spec in mv.outputs:  # a ZipMap's classes name the columns it maps
                zipmap = mv.metadata.get(f"labels.{spec.name}")
                if zipmap is not None and spec.name not in mv.labels:
                    mv.labels[spec.name] = [str(label) for label in json.loads(zipmap)]
        except Exception as exc:
            verbatim = getattr(exc, "verbatim", False)  # the reason says it all (pipelines)
            mv.state = State.UNAVAILABLE
            mv.reason = str(exc) if verbatim else f"{type(exc).__name__}: {exc}"
            metrics.MODEL_READY.labels(mv.name, str(mv.version), device).set(0)
            metrics.MODEL_LOAD_FAILURES.labels(mv.name).inc()
            log.error("model %s version %s failed to load: %s", mv.name, mv.version, mv.reason)
            return
        runtime.release_freed_memory()
        mv.state = State.READY
        elapsed = time.monotonic() - started
        metrics.MODEL_LOAD_DURATION.labels(mv.name, str(mv.version)).observe(elapsed)
        metrics.MODEL_READY.labels(mv.name, str(mv.version), mv.device).set(1)
        log.info(
            "model %s version %s ready on %s (%s, batching %s) in %.2f s",
            mv.name,
            mv.version,
            mv.device,
            mv.provider,
            f"up to {config.max_batch_size}" if mv.batching else "off",
            elapsed,
        )

    def _load_onnx(self, mv: ModelVersion, kind: str, device_id: int | None) -> None:
        config = mv.config
        if self.vet is not None:
            self.vet(mv.path)
        threads = config.intra_op_threads or runtime.intra_op_threads(
            self.workers, config.instance_count
        )
        shared = (
            Path(self.runtime_dir) / SHARED_WEIGHTS_DIR
            if self.runtime_dir and config.share_weights
            else None
        )
        sessions = [
            runtime.create_session(
                mv.path,
                kind,
                threads,
                device_id=device_id,
                cuda_options=config.cuda,
                tensorrt_options=config.tensorrt,
                shared_weights=shared,
            )
            for _ in range(config.instance_count)
        ]
        first = sessions[0]
        mv.inputs, mv.outputs = first.inputs, first.outputs
        mv.provider, mv.device, mv.metadata = first.provider, first.device, first.metadata
        mv.batching = self._batching(mv, first)
        self._warm_up(mv, sessions)
        mv.batcher = Batcher(
            mv.name,
            str(mv.version),
            [s.run for s in sessions],
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            max_queue_size=config.max_queue_size,
            batching=mv.batching,
            padding=mv.padding,
        )

    def _batching(self, mv: ModelVersion, session: runtime.Session) -> bool:
        """Whether requests may be batched: max_batch_size > 0, every input's first dimension
        variable, and every output carrying the batch dimension (serve.lifecycle.batch_dims).
        A model whose outputs do not is served unbatched with a warning, or refused when its
        config says `require_batching`."""
        config = mv.config
        configured = config.padding_values()
        if configured:  # a misspelt input name must not go unnoticed
            batch_dims.padding_values(session.inputs, configured)
        if config.max_batch_size <= 0:
            self._padding_unused(mv, "max_batch_size is 0")
            return False
        fixed = [s.name for s in session.inputs if not s.shape or s.shape[0] != -1]
        verdict = None if fixed else batch_dims.decide(session)
        if verdict is not None and verdict.all_batched:
            mv.outputs = [
                TensorSpec(s.name, s.datatype, (-1, *s.shape[1:])) if s.shape else s
                for s in mv.outputs
            ]
            if config.pad_variable_length_inputs:
                mv.padding = batch_dims.decide_lengths(session, configured, config.padding_buckets)
                self._describe_padding(mv)
            return True
        if fixed:
            why = f"input(s) {', '.join(map(repr, fixed))} have a fixed first dimension"
        else:
            why = (
                f"output(s) {', '.join(map(repr, verdict.other))} do not carry the batch "
                f"dimension (their rows depend on the data; {verdict.how})"
            )
        if config.require_batching:
            raise ValueError(f"config.json sets require_batching, but {why}")
        self._padding_unused(mv, "the model is not batched")
        log.log(
            logging.INFO if fixed else logging.WARNING,
            "model %s version %s: %s; serving it without batching, one request per run",
            mv.name,
            mv.version,
            why,
        )
        return False

    @staticmethod
    def _padding_unused(mv: ModelVersion, why: str) -> None:
        if mv.config.pad_variable_length_inputs:
            log.warning(
                "model %s version %s: pad_variable_length_inputs has no effect: %s",
                mv.name,
                mv.version,
                why,
            )

    @staticmethod
    def _describe_padding(mv: ModelVersion) -> None:
        plan = mv.padding
        if plan is None:
            log.warning(
                "model %s version %s: pad_variable_length_inputs has no effect: no input has a "
                "variable dimension besides the batch",
                mv.name,
                mv.version,
            )
            return
        follows = [
            f"{spec.name}[{','.join(str(d) for d, _ in dims)}]"
            for spec, dims in zip(mv.outputs, plan.outputs, strict=True)
            if dims
        ]
        log.info(
            "model %s version %s: variable-length inputs padded into batches (%s); outputs cut "
            "back per request: %s",
            mv.name,
            mv.version,
            ", ".join(f"{name}[{','.join(str(d) for d, _ in dims)}]"
                      for name, dims in plan.inputs.items()),
            ", ".join(follows) or "none",
        )  # fmt: skip

    def _warm_up(self, mv: ModelVersion, sessions: list[runtime.Session]) -> None:
        """Config samples must run (else the model fails); synthesized zeros may fail (logged)."""
        warmup = mv.config.warmup
        if warmup is False:
            return
        if isinstance(warmup, list):
            for i, sample in enumerate(warmup):
                try:
                    feeds = sample_inputs(sample, mv.inputs)
                    for session in sessions:
                        session.run(feeds)
                except Exception as exc:
                    raise RuntimeError(f"warm-up sample {i} failed: {exc}") from exc
            return
        try:
            feeds = _warmup_inputs(mv.inputs)
            for session in sessions:
                session.run(feeds)
        except Exception as exc:
            log.warning(
                "model %s version %s: warm-up with synthesized zeros failed (%s); "
                "serving anyway, such inputs can be invalid for the model",
                mv.name,
                mv.version,
                exc,
            )

    # -- queries -------------------------------------------------------------------------------

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Block until every version reached a final state (used by tests and tools)."""
        return self._loaded.wait(timeout)

    def all_final(self) -> bool:
        return self._loaded.is_set()

    def any_failed(self) -> bool:
        return self.error is not None or any(
            m.state is not State.READY or any(not v.update for v in m.failed_versions())
            for m in self.models.values()
        )

    def ready(self, strict: bool = False) -> bool:
        """Readiness: all loads finished in every worker (and, when strict, none failed here)."""
        if self.error is not None or not self.all_final():
            return False
        if not worker_readiness.all_workers_loaded(self.runtime_dir, self.workers):
            return False
        return not (strict and self.any_failed())

    def model(self, name: str) -> Model:
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(f"unknown model {name!r}; {self.served()}") from None

    def served(self, shown: int = 20) -> str:
        """The models this worker serves, as a 404 names them."""
        names = sorted(self.models)
        if not names:
            return f"no model is served (repository {str(self.repository)!r})"
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return f"served models: {', '.join(names[:shown])}{more}"

    def version(self, name: str, version: str | None = None) -> ModelVersion:
        """The version asked for, or the highest READY one; raises ModelNotFound/ModelNotReady."""
        model = self.model(name)
        if version is not None and version != "":
            try:
                mv = model.versions[int(version)]
            except (ValueError, KeyError):
                have = ", ".join(map(str, model.versions)) or "none"
                raise ModelNotFound(
                    f"unknown version {version!r} of model {name!r} (available: {have})"
                ) from None
        else:
            if model.error:
                raise ModelNotReady(f"model {name!r} is unavailable: {model.error}", False)
            ready = [v for v in model.versions.values() if v.state is State.READY]
            mv = ready[-1] if ready else list(model.versions.values())[-1]
        if mv.state is State.LOADING:
            raise ModelNotReady(f"model {name!r} version {mv.version} is still loading", True)
        if mv.state is State.UNAVAILABLE:
            raise ModelNotReady(
                f"model {name!r} version {mv.version} is unavailable: {mv.reason}", False
            )
        if mv.ready_check is not None:
            mv.ready_check()
        return mv
