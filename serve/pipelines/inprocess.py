"""Run a served model from inside the server (ensemble steps, BLS calls): the same lookup,
hold, validation, metrics and batcher a request from the network goes through
(serve.core.inference), without HTTP.

Each call resolves the model version now (so a reloaded step model is picked up at once), holds
it until answered (so a swap never drops it) and queues in that version's own batcher (so calls
from ensembles and from clients batch together).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from serve.core.errors import failure_for
from serve.core.inference import check_inputs, count_request, hold_version
from serve.lifecycle.registry import ModelRegistry, ModelVersion
from serve.protocol.types import RequestedOutput


def _version(version: int | str | None) -> str | None:
    return None if version in (None, -1, "-1", "") else str(version)


@contextmanager
def held(registry: ModelRegistry, name: str, version: int | str | None) -> Iterator[ModelVersion]:
    """The model version to run (as for a client request), held until the block ends."""
    mv = hold_version(registry, name, _version(version))
    try:
        yield mv
    finally:
        mv.release()


def pick(mv: ModelVersion, results: list, requested: list[str]) -> list[tuple[str, np.ndarray]]:
    """(name, array) of the requested outputs (every output when none is named)."""
    by_name = {s.name: r for s, r in zip(mv.outputs, results, strict=True)}
    return [(n, by_name[n]) for n in (requested or list(by_name))]


def infer(
    registry: ModelRegistry,
    name: str,
    version: int | str | None,
    feeds: dict[str, np.ndarray],
    requested: list[str],
    deadline: float | None,
    caller: str = "bls",
) -> list[tuple[str, np.ndarray]]:
    """Run `feeds` on a served model from a runner thread; raises what a client would get."""
    started = time.perf_counter()
    status = 500
    with held(registry, name, version) as mv:
        try:
            check_inputs(mv, feeds, [RequestedOutput(n, False) for n in requested])
            results = mv.batcher.infer(feeds, deadline)  # type: ignore[union-attr]
            status = 200
        except Exception as exc:
            status = failure_for(exc).status
            raise
        finally:
            count(mv, caller, status, started)
    return pick(mv, results, requested)


def count(mv: ModelVersion, caller: str, status: int, started: float) -> None:
    """Count an in-process call in the model's request metrics, `protocol` naming the caller."""
    count_request(mv.name, str(mv.version), caller, status, started)
