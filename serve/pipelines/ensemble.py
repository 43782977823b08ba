"""Ensembles (Triton's `platform: "ensemble"`): a graph of served models run inside the server.

Each step is a request to the inference core's in-process API (InferenceCore.infer /
infer_async): the same lookup, validation, deadline and metrics as a client's request, and the
step model's own batcher, so concurrent ensemble requests batch at every step, together with
direct calls of the same models. The step model version is looked up per request: a reloaded
step is used at once, and its inputs are checked against its signature as any request's are.
The graph is checked when the ensemble loads (unknown models, unmapped or mistyped tensors,
cycles), with Triton's rules and messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from prometheus_client import Histogram

from serve.core.errors import Code, ServeError, failure_for, is_unexpected
from serve.lifecycle.config import V2_TO_TRITON, ModelConfig, declared_specs
from serve.lifecycle.registry import ModelNotFound, ModelNotReady, ModelRegistry, ModelVersion
from serve.observability import metrics
from serve.protocol.types import TensorSpec

log = logging.getLogger("tapeserve.ensemble")


class InProcess(Protocol):
    """The inference core's in-process API (serve.core.inference.InferenceCore)."""

    def infer(self, model: str, inputs: dict, **options: Any) -> dict[str, np.ndarray]: ...

    async def infer_async(self, model: str, inputs: dict, **options: Any) -> dict: ...


STEP_DURATION = Histogram(
    "tapeserve_ensemble_step_duration_seconds",
    "Time of one ensemble step (queue and compute of the step's model), by ensemble and step.",
    ["ensemble", "step", "model", "outcome"],
    buckets=metrics.LATENCY_BUCKETS,
)


class EnsembleError(ValueError):
    """The ensemble's graph does not fit its steps; the message lists every reason."""

    verbatim = True


@dataclass(frozen=True)
class Step:
    index: int
    model: str
    version: int
    input_map: dict[str, str]  # step input -> ensemble tensor
    output_map: dict[str, str]  # step output -> ensemble tensor

    @property
    def label(self) -> str:
        return f"{self.index}:{self.model}"


def _compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


def _triton(spec: TensorSpec) -> str:
    return V2_TO_TRITON.get(spec.datatype, spec.datatype)


class Ensemble:
    """What serves one ensemble version: `infer`/`infer_async` run the steps in dependency order.

    It stands where an ONNX model has its Batcher (ModelVersion.batcher); it has no queue of
    its own, the steps' batchers do the queueing.
    """

    def __init__(
        self, registry: ModelRegistry, core: InProcess, name: str, config: ModelConfig
    ) -> None:
        self.registry = registry
        self.core = core
        self.name = name
        self.inputs = declared_specs(config, "input")
        self.outputs = declared_specs(config, "output")
        self.max_batch_size = config.max_batch_size
        self.steps = [
            Step(
                i, s["model_name"], s["model_version"], dict(s["input_map"]), dict(s["output_map"])
            )
            for i, s in enumerate(config.ensemble_scheduling["step"])  # type: ignore[index]
        ]
        self.waves: list[list[Step]] = []
        self.validate()

    # -- load-time checks -----------------------------------------------------------------

    def _resolve(self) -> tuple[dict[int, ModelVersion], list[str]]:
        versions, missing = {}, []
        for step in self.steps:
            try:
                versions[step.index] = self.registry.version(
                    step.model, None if step.version == -1 else str(step.version)
                )
            except (ModelNotFound, ModelNotReady):
                missing.append(step.model)
        return versions, missing

    def validate(self) -> None:
        """Check the graph against the step models now served; EnsembleError with reasons."""
        versions, missing = self._resolve()
        if missing:
            raise EnsembleError(
                f"ensemble {self.name} contains models that are not available: "
                f"{', '.join(sorted(set(missing)))}"
            )
        problems: list[str] = []
        where = f"in ensemble {self.name},"
        tensors: dict[str, tuple[TensorSpec, str]] = {
            s.name: (s, f"ensemble {self.name}") for s in self.inputs
        }
        for step in self.steps:
            mv = versions[step.index]
            step_outputs = {s.name: s for s in mv.outputs}
            for output, tensor in step.output_map.items():
                spec = step_outputs.get(output)
                if spec is None:
                    problems.append(
                        f"{where} ensemble tensor {tensor} is mapped from "
                        f"non-existing output {output} in model {step.model}"
                    )
                elif tensor in tensors:
                    problems.append(
                        f"{where} ensemble tensor {tensor} is written by more than "
                        f"one producer ({tensors[tensor][1]} and model {step.model})"
                    )
                else:
                    tensors[tensor] = (spec, f"model {step.model}")
        for step in self.steps:
            mv = versions[step.index]
            step_inputs = {s.name: s for s in mv.inputs}
            for name, tensor in step.input_map.items():
                spec = step_inputs.get(name)
                if spec is None:
                    problems.append(
                        f"{where} ensemble tensor {tensor} is mapping to "
                        f"non-existing input {name} in model {step.model}"
                    )
                    continue
                produced = tensors.get(tensor)
                if produced is None:
                    continue  # reported by the dataflow check below
                have, source = produced
                if have.datatype != spec.datatype:
                    problems.append(
                        f"{where} ensemble tensor {tensor}: inconsistent data type: "
                        f"{_triton(have)} is inferred from {source} while "
                        f"{_triton(spec)} is inferred from model {step.model}"
                    )
                elif not _compatible(have.shape, spec.shape):
                    problems.append(
                        f"{where} ensemble tensor {tensor}: inconsistent shape: "
                        f"{list(have.shape)} is inferred from {source} while "
                        f"{list(spec.shape)} is inferred from model {step.model}"
                    )
            for name in sorted(set(step_inputs) - set(step.input_map)):
                problems.append(
                    f"{where} input {name} in model {step.model} is not mapped to "
                    "any ensemble tensors"
                )
            if mv.max_batch_size and self.max_batch_size > mv.max_batch_size:
                problems.append(
                    f"ensemble {self.name} allows maximum batch size "
                    f"{self.max_batch_size}, but it contains model {step.model} which "
                    f"only allows maximum batch size to be {mv.max_batch_size}"
                )
        for out in self.outputs:
            produced = tensors.get(out.name)
            if produced is not None and produced[0].datatype != out.datatype:
                problems.append(
                    f"{where} ensemble output {out.name}: inconsistent data type: "
                    f"{_triton(out)} is declared while {_triton(produced[0])} is "
                    f"inferred from {produced[1]}"
                )
        problems += self._dataflow()
        if problems:
            raise EnsembleError("; ".join(problems))

    def _dataflow(self) -> list[str]:
        """Order the steps in waves from the inputs; steps that never run are a cycle or miss a
        producer, outputs never written and tensors never read are refused too."""
        ready = {s.name for s in self.inputs}
        pending = list(self.steps)
        waves: list[list[Step]] = []
        while pending:
            wave = [s for s in pending if set(s.input_map.values()) <= ready]
            if not wave:
                break
            waves.append(wave)
            for step in wave:
                ready |= set(step.output_map.values())
            pending = [s for s in pending if s not in wave]
        self.waves = waves  # one assignment: requests running meanwhile see old or new
        where = f"in ensemble {self.name},"
        problems = []
        if pending:
            blocked = sorted({t for s in pending for t in s.input_map.values()} - ready)
            problems.append(
                f"{where} step(s) {', '.join(s.label for s in pending)} can never "
                f"run: ensemble tensor(s) {', '.join(blocked)} are not produced by a "
                "step that can run (a cycle, or a tensor nothing writes)"
            )
        for out in self.outputs:
            if out.name not in ready:
                problems.append(f"{where} output {out.name} is not written")
        consumed = {t for s in self.steps for t in s.input_map.values()}
        outputs = {o.name for o in self.outputs}
        for spec in self.inputs:
            if spec.name not in consumed:
                problems.append(f"{where} ensemble input {spec.name} is not used")
        for step in self.steps:
            for tensor in step.output_map.values():
                if tensor not in consumed and tensor not in outputs:
                    problems.append(f"{where} ensemble tensor {tensor} is unused")
        return problems

    def check_ready(self) -> None:
        """Ready when every step is (raises ModelNotReady naming the first that is not)."""
        for step in self.steps:
            try:
                self.registry.version(step.model, None if step.version == -1 else str(step.version))
            except (ModelNotFound, ModelNotReady) as exc:
                raise ModelNotReady(
                    f"ensemble {self.name!r}: step {step.label} is not ready ({exc})",
                    getattr(exc, "loading", False),
                ) from None

    # -- requests ---------------------------------------------------------------------------

    def _version(self, step: Step) -> str | None:
        return None if step.version == -1 else str(step.version)

    def _failed(self, step: Step, exc: Exception, started: float) -> ServeError:
        """The step's failure, as the ensemble's: its status, its message after the step's name."""
        STEP_DURATION.labels(self.name, step.label, step.model, "error").observe(
            time.perf_counter() - started
        )
        if is_unexpected(exc):
            log.error("ensemble %s, step %s", self.name, step.label, exc_info=exc)
        failure = failure_for(exc)
        code = Code.UNAVAILABLE if failure.code is Code.NOT_FOUND else failure.code  # step gone
        message = f"in ensemble '{self.name}', step {step.label} failed: {failure.message}"
        return ServeError(code, message, failure.headers)

    def _done(self, step: Step, outputs: dict, tensors: dict, started: float) -> None:
        STEP_DURATION.labels(self.name, step.label, step.model, "ok").observe(
            time.perf_counter() - started
        )
        for output, tensor in step.output_map.items():
            tensors[tensor] = outputs[output]

    async def _run_step_async(
        self, step: Step, tensors: dict, deadline: float | None, parameters: dict | None
    ) -> None:
        started = time.perf_counter()
        feeds = {name: tensors[tensor] for name, tensor in step.input_map.items()}
        try:
            outputs = await self.core.infer_async(
                step.model, feeds, version=self._version(step), outputs=list(step.output_map),
                parameters=parameters, deadline=deadline,
            )  # fmt: skip
        except Exception as exc:
            raise self._failed(step, exc, started) from None
        self._done(step, outputs, tensors, started)

    def _run_step(
        self, step: Step, tensors: dict, deadline: float | None, parameters: dict | None
    ) -> None:
        started = time.perf_counter()
        feeds = {name: tensors[tensor] for name, tensor in step.input_map.items()}
        try:
            outputs = self.core.infer(
                step.model, feeds, version=self._version(step), outputs=list(step.output_map),
                parameters=parameters, deadline=deadline,
            )  # fmt: skip
        except Exception as exc:
            raise self._failed(step, exc, started) from None
        self._done(step, outputs, tensors, started)

    async def infer_async(
        self,
        feeds: dict[str, np.ndarray],
        deadline: float | None = None,
        parameters: dict | None = None,
    ) -> list:
        """Run the steps (those of one wave concurrently); the ensemble outputs in order.

        Every step gets the request's parameters, as Triton forwards them to composing models."""
        tensors = dict(feeds)
        for wave in self.waves:
            if len(wave) == 1:
                await self._run_step_async(wave[0], tensors, deadline, parameters)
                continue
            results = await asyncio.gather(
                *(self._run_step_async(s, tensors, deadline, parameters) for s in wave),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result  # the first failing step (in step order) answers
        return [tensors[o.name] for o in self.outputs]

    def infer(
        self,
        feeds: dict[str, np.ndarray],
        deadline: float | None = None,
        parameters: dict | None = None,
    ) -> list:
        """`infer_async` for a request thread (the steps run one after the other)."""
        tensors = dict(feeds)
        for wave in self.waves:
            for step in wave:
                self._run_step(step, tensors, deadline, parameters)
        return [tensors[o.name] for o in self.outputs]

    def close(self) -> None:
        """Nothing to stop: the step models' batchers belong to them."""
