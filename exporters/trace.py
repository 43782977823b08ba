"""Build an ONNX graph from an engine trace.

The model's eval-mode forward pass runs once under `engine.tracing.trace()`; every recorded
primitive is lowered by the `onnx` rule that sits beside its forward and gradient rules in
`engine/ops/`. This module only supplies the lowering context those rules write into, names
values, turns parameters and buffers into initializers and marks the batch dimension symbolic.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

BATCH = "batch"
MIN_OPSET = 13


class ExportError(Exception):
    """The model cannot be exported as asked; the message says which op, module or setting."""


def _sanitize(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.]+", "_", text).strip("_")


@dataclass
class LoweringContext:
    """What a primitive's `onnx(ctx, inputs, node)` rule writes into.

    `node()` appends an ONNX node and returns its fresh output name(s); `const()` adds an
    initializer. Names carry the module path of the op being lowered, so a graph viewer shows
    where each node came from.
    """

    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    scope: str = ""
    _taken: set[str] = field(default_factory=set)

    def fresh(self, hint: str) -> str:
        """A value name not used yet in this graph, derived from `hint` and the current scope."""
        base = _sanitize(f"{self.scope}.{hint}" if self.scope else hint) or "v"
        name, n = base, 0
        while name in self._taken:
            n += 1
            name = f"{base}_{n}"
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> str:
        """Claim an exact name (graph inputs, parameter names); fails on a clash."""
        if name in self._taken:
            raise ExportError(f"value name {name!r} is used twice")
        self._taken.add(name)
        return name

    def node(
        self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, **attrs: Any
    ) -> str | list[str]:
        outputs = [self.fresh(op_type) for _ in range(n_outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        domain = attrs.pop("domain", None)
        self.nodes.append(
            helper.make_node(
                op_type,
                list(inputs),
                outputs,
                name=self.fresh(f"{op_type}_node"),
                domain=domain,
                **attrs,
            )
        )
        return outputs[0] if n_outputs == 1 else outputs

    def const(self, array: Any, name_hint: str = "c") -> str:
        name = self.fresh(name_hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def initializer(self, name: str, array: np.ndarray) -> str:
        """Add a parameter or buffer under its exact state_dict name."""
        self.initializers.append(numpy_helper.from_array(np.asarray(array), self.reserve(name)))
        return name


# -- the engine side: tracing, rule lookup, parameter names -------------------------------------


def _engine():
    import engine
    import engine.tracing

    return engine


def op_name(op: Any) -> str:
    """The primitive's name whether the trace records the primitive object or its name."""
    return op if isinstance(op, str) else str(getattr(op, "name", op))


# Rules in exporters/ that replace a primitive's own rule while it is wrong or missing upstream.
# Each entry names the primitive and says why; empty when every engine rule is right.
LOWERING_OVERRIDES: dict[str, Callable[..., Any]] = {}


def lowering_rule(op: Any) -> Callable[..., Any] | None:
    """The primitive's `onnx` rule (an override from LOWERING_OVERRIDES first)."""
    name = op_name(op)
    if name in LOWERING_OVERRIDES:
        return LOWERING_OVERRIDES[name]
    rule = None if isinstance(op, str) else getattr(op, "onnx", None)
    if rule is None:
        from engine.ops import REGISTRY

        rule = getattr(REGISTRY.get(name), "onnx", None)
    return rule


def flatten_outputs(out: Any) -> list[Any]:
    """Model outputs in order: a Tensor, or nested tuples/lists of them (LSTM's (y, (h, c)))."""
    if isinstance(out, list | tuple):
        return [t for item in out for t in flatten_outputs(item)]
    return [out]


def named_state(model: Any) -> Iterator[tuple[str, Any]]:
    """Parameters then buffers by their state_dict names (initializer names in the graph)."""
    yield from model.named_parameters()
    if hasattr(model, "named_buffers"):
        yield from model.named_buffers()
    if hasattr(model, "state_dict"):
        yield from model.state_dict().items()


def output_names_for(n: int, output_names: Sequence[str] | None) -> list[str]:
    if output_names is None:
        return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]
    if len(output_names) != n:
        raise ExportError(f"model has {n} outputs but {len(output_names)} output names were given")
    return list(output_names)


def _value_info(name: str, dtype: np.dtype, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), list(shape))


def _symbolic(shape_a: Sequence[int], shape_b: Sequence[int]) -> list[int | str]:
    """Dimensions that changed between two batch sizes are the batch dimension."""
    return [BATCH if a != b else a for a, b in zip(shape_a, shape_b, strict=True)]


def trace_model(model: Any, example: np.ndarray) -> tuple[Any, list[Any], Any]:
    """Run `model` in eval mode on `example` under the tracer: (input tensor, outputs, trace)."""
    engine = _engine()
    if hasattr(model, "eval"):
        model.eval()
    x = engine.Tensor(np.asarray(example))
    with engine.no_grad(), engine.tracing.trace() as tr:
        out = model(x)
    return x, flatten_outputs(out), tr


def run_model(model: Any, batch: np.ndarray) -> list[np.ndarray]:
    """The engine's eval-mode outputs as arrays (the reference verification compares with)."""
    engine = _engine()
    if hasattr(model, "eval"):
        model.eval()
    with engine.no_grad():
        out = model(engine.Tensor(np.asarray(batch)))
    return [np.asarray(t.data) for t in flatten_outputs(out)]


def _batch_fill(data: np.ndarray, batch: int) -> bool:
    """A constant that is one value repeated over a leading batch-sized dimension (e.g. an
    LSTM's zero initial state built with the example's batch size)."""
    return (
        data.ndim >= 1
        and data.shape[0] == batch
        and data.size > 0
        and bool(np.all(data == data.flat[0]))
    )


def batch_filled(ctx: LoweringContext, input_name: str, data: np.ndarray) -> str:
    """ConstantOfShape([batch of the graph input, *data.shape[1:]]) filled with data's value,
    so the constant follows the batch size instead of baking in the example's."""
    shape = ctx.node("Shape", [input_name])
    batch = ctx.node(
        "Slice",
        [
            shape,
            ctx.const(np.array([0], np.int64), "start"),
            ctx.const(np.array([1], np.int64), "end"),
        ],
    )
    rest = ctx.const(np.array(data.shape[1:], dtype=np.int64), "shape")
    full = ctx.node("Concat", [batch, rest], axis=0)
    value = numpy_helper.from_array(np.array([data.flat[0]], dtype=data.dtype))
    return ctx.node("ConstantOfShape", [full], value=value)


def build_graph(
    model: Any,
    example: np.ndarray,
    *,
    opset: int = 17,
    input_name: str = "input",
    output_names: Sequence[str] | None = None,
) -> onnx.ModelProto:
    """Trace `model` on `example` (batch > 1) and lower it to an ONNX model, before rewrites.

    Dimension 0 of the input is symbolic ("batch"); outputs get "batch" wherever their shape
    follows the batch size (found by running a second batch size).
    """
    example = np.asarray(example)
    if example.ndim < 1 or example.shape[0] < 2:
        raise ExportError(
            f"example input shape {example.shape}: use a batch of 2 or more, so shapes that "
            "depend on the batch size cannot be mistaken for constants"
        )
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET} or newer")
    engine = _engine()
    try:
        x, outputs, tr = trace_model(model, example)
    except Exception as exc:
        raise ExportError(
            f"the model fails on an example input of shape {example.shape} "
            f"(dtype {example.dtype}): {exc}; check --example-shape"
        ) from exc
    ctx = LoweringContext(opset=opset)
    names: dict[int, str] = {id(x): ctx.reserve(input_name)}
    state = {}
    for key, tensor in named_state(model):
        if isinstance(tensor, engine.Tensor):
            state.setdefault(id(tensor), (key, tensor))

    def value_name(t: Any) -> str:
        if id(t) in names:
            return names[id(t)]
        if id(t) in state:
            key, tensor = state[id(t)]
            names[id(t)] = ctx.initializer(key, np.asarray(tensor.data))
        else:  # a tensor made during forward from no traced op: a constant
            data = np.asarray(getattr(t, "data", t))
            if _batch_fill(data, example.shape[0]):
                names[id(t)] = batch_filled(ctx, input_name, data)
            else:
                names[id(t)] = ctx.const(data, "const")
        return names[id(t)]

    for node in tr.nodes:
        ctx.scope = node.scope or ""
        inputs = [value_name(t) for t in node.inputs]
        rule = lowering_rule(node.op)
        where = f"module {node.scope!r}" if node.scope else "the top-level model"
        if rule is None:
            raise ExportError(f"op {op_name(node.op)!r} from {where} has no ONNX lowering")
        try:
            result = rule(ctx, inputs, node)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(
                f"lowering op {op_name(node.op)!r} from {where} at opset {opset} failed: {exc}"
            ) from exc
        result = [result] if isinstance(result, str) else list(result)
        if len(result) != len(node.outputs):
            raise ExportError(
                f"lowering of op {op_name(node.op)!r} from {where} returned {len(result)} "
                f"values for {len(node.outputs)} outputs"
            )
        for tensor, name in zip(node.outputs, result, strict=True):
            names[id(tensor)] = name

    ctx.scope = ""
    out_names = output_names_for(len(outputs), output_names)
    other = example[:1] if example.shape[0] > 2 else np.concatenate([example, example[:1]])
    other_shapes = [a.shape for a in run_model(model, other)]
    graph_outputs = []
    for tensor, name, other_shape in zip(outputs, out_names, other_shapes, strict=True):
        ctx.nodes.append(helper.make_node("Identity", [value_name(tensor)], [name]))
        shape = _symbolic(tensor.shape, other_shape)
        graph_outputs.append(_value_info(name, np.dtype(tensor.dtype), shape))
    graph = helper.make_graph(
        ctx.nodes,
        "tapeserve",
        [_value_info(input_name, example.dtype, [BATCH, *example.shape[1:]])],
        graph_outputs,
        ctx.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
