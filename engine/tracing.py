"""Record every primitive application (for the ONNX exporter) and the module scope it ran in.

    with engine.tracing.trace() as tr:
        out = model(x)
    for node in tr.nodes: ...   # TraceNode(op, inputs, attrs, outputs, scope)

Recording happens whether or not gradients are on. `scope(name)` nests with dots, so a module
calling `with scope("fc1")` inside its parent's `with scope("encoder")` gives "encoder.fc1".
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_local = threading.local()
_live = 0  # traces open on any thread: active() reads this before the (slower) thread-local
_live_lock = threading.Lock()


def _traces() -> list[Trace]:
    stack = getattr(_local, "traces", None)
    if stack is None:
        stack = _local.traces = []
    return stack


def _scopes() -> list[str]:
    stack = getattr(_local, "scopes", None)
    if stack is None:
        stack = _local.scopes = []
    return stack


@dataclass
class TraceNode:
    """One primitive application: `op` is the primitive class (op.name, op.onnx)."""

    op: Any
    inputs: list
    attrs: dict
    outputs: list
    scope: str = ""


@dataclass
class Trace:
    nodes: list[TraceNode] = field(default_factory=list)


def active() -> bool:
    """Whether any trace is recording on this thread (checked on every primitive call)."""
    return _live > 0 and bool(getattr(_local, "traces", None))


def record(op: Any, inputs: list, attrs: dict, outputs: list) -> None:
    node = TraceNode(op, list(inputs), dict(attrs), list(outputs), current_scope())
    for tr in _traces():
        tr.nodes.append(node)


def current_scope() -> str:
    return ".".join(s for s in _scopes() if s)


@contextlib.contextmanager
def trace() -> Iterator[Trace]:
    """Record the primitives run inside the block into the yielded Trace."""
    global _live
    tr = Trace()
    _traces().append(tr)
    with _live_lock:
        _live += 1
    try:
        yield tr
    finally:
        with _live_lock:
            _live -= 1
        _traces().remove(tr)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Attribute the primitives run inside the block to module path `name` (nested by dots)."""
    _scopes().append(name)
    try:
        yield
    finally:
        _scopes().pop()
