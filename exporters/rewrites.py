"""Inference rewrites on a lowered ONNX graph.

Each rule is a function that changes the graph in place and returns how many sites it
rewrote, so tests and the CLI can say what happened. `optimize` runs them in an order where
each one exposes work for the next: no-ops out first, Transpose(W) consumed by Gemm before it
is folded into a copy, BatchNorm folded once its parameters are plain initializers.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# Ops whose value is not a function of their inputs, never folded.
NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"}
NOOPS = {"Identity", "Dropout"}


class GraphView:
    """Producer/consumer maps over a graph, rebuilt after each structural change."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers[name].append(node)
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}

    def array(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else numpy_helper.to_array(t)

    def sole_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.outputs:
            return users[0]
        return None

    def set_initializer(self, name: str, array: np.ndarray) -> None:
        new = numpy_helper.from_array(np.ascontiguousarray(array), name)
        if name in self.inits:
            self.inits[name].CopyFrom(new)
        else:
            self.graph.initializer.append(new)
            self.inits[name] = self.graph.initializer[-1]

    def unique(self, base: str) -> str:
        taken = set(self.producer) | set(self.inits) | self.inputs
        name, n = base, 0
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        return name


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _remove(graph: onnx.GraphProto, doomed: list[onnx.NodeProto]) -> None:
    """Remove nodes (compared by content: protobuf wrappers have no stable identity)."""
    _set_nodes(graph, [n for n in graph.node if not any(n == d for d in doomed)])


def _set_nodes(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    copies = [copy.deepcopy(n) for n in nodes]  # detached before the container is cleared
    del graph.node[:]
    graph.node.extend(copies)


def _rewrite_each(graph: onnx.GraphProto, rule) -> int:
    """Apply `rule(view, node) -> bool` to each node until none changes; returns the count.

    Rules may change the graph, so the scan restarts on fresh maps after every change.
    """
    count = 0
    while True:
        view = GraphView(graph)
        if not any(rule(view, node) for node in graph.node):
            return count
        count += 1


def _replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def drop_noops(model: onnx.ModelProto) -> int:
    """Remove Identity and inference-mode Dropout, wiring their consumers to their input."""
    graph = model.graph

    def rule(view: GraphView, node: onnx.NodeProto) -> bool:
        if node.op_type not in NOOPS or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Dropout" and (len(node.input) > 2 and node.input[2]):
            return False  # an explicit training_mode input: leave it alone
        src, dst = node.input[0], node.output[0]
        if (
            node.op_type == "Dropout"
            and len(node.output) > 1
            and view.consumers.get(node.output[1])
        ):
            return False
        if dst in view.outputs:
            # The graph output keeps its name: the producer of `src` is renamed instead.
            producer = view.producer.get(src)
            if producer is None or src in view.outputs or src in view.inputs:
                return False
            producer.output[list(producer.output).index(src)] = dst
            _replace_uses(graph, src, dst)
        else:
            _replace_uses(graph, dst, src)
        _remove(graph, [node])
        return True

    return _rewrite_each(graph, rule)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _evaluate(model: onnx.ModelProto, node: onnx.NodeProto, view: GraphView) -> list[np.ndarray]:
    inputs = [n for n in node.input if n]
    arrays = {n: view.array(n) for n in inputs}
    graph = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(
                n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)
            )
            for n, a in arrays.items()
        ],
        [helper.make_empty_tensor_value_info(o) for o in node.output],
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version or onnx.IR_VERSION
    return ReferenceEvaluator(sub).run(None, arrays)


def fold_constants(model: onnx.ModelProto) -> int:
    """Evaluate nodes whose inputs are all initializers and store their results instead."""
    graph = model.graph
    view = GraphView(graph)
    folded = []
    for node in graph.node:  # topological order: a folded result can feed the next fold
        if node.op_type in NONDETERMINISTIC or node.domain not in ("", "ai.onnx"):
            continue
        if not all(n == "" or n in view.inits for n in node.input):
            continue
        if any(o in view.outputs for o in node.output):
            continue
        for name, value in zip(node.output, _evaluate(model, node, view), strict=False):
            if name:
                view.set_initializer(name, np.asarray(value))
        folded.append(node)
    _remove(graph, folded)
    return len(folded)


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if vi.name == name and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return None


def fuse_matmul_add(model: onnx.ModelProto) -> int:
    """MatMul(A[M,K], W) + bias[N] -> Gemm; Transpose(W) as the right operand becomes transB."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = model.graph

    def rule(view: GraphView, mm: onnx.NodeProto) -> bool:
        if mm.op_type != "MatMul":
            return False
        add = view.sole_consumer(mm.output[0])
        if add is None or add.op_type != "Add" or _rank(inferred, mm.input[0]) != 2:
            return False
        bias_name = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        bias = view.array(bias_name)
        b_name, trans_b = mm.input[1], 0
        weight = view.array(b_name)
        transpose = view.producer.get(b_name)
        if weight is None and transpose is not None and transpose.op_type == "Transpose":
            weight = view.array(transpose.input[0])
            perm = _attr(transpose, "perm")
            if weight is not None and weight.ndim == 2 and list(perm or [1, 0]) == [1, 0]:
                b_name, trans_b = transpose.input[0], 1
            else:
                weight = None
        if weight is None or weight.ndim != 2 or bias is None:
            return False
        n = weight.shape[0] if trans_b else weight.shape[1]
        if bias.size != n or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            return False
        if bias.ndim != 1 or bias.dtype != weight.dtype:
            bias_name = view.unique(f"{bias_name}_gemm")
            view.set_initializer(bias_name, bias.reshape(n).astype(weight.dtype))
        gemm = helper.make_node(
            "Gemm",
            [mm.input[0], b_name, bias_name],
            [add.output[0]],
            name=add.name or mm.name,
            transB=trans_b,
        )
        nodes = [gemm if n == add else n for n in graph.node if n != mm]
        _set_nodes(graph, nodes)
        return True

    return _rewrite_each(graph, rule)


def _batchnorm_params(view: GraphView, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """BatchNormalization as y = x * scale + shift per channel, or None if not constant."""
    arrays = [view.array(n) for n in bn.input[1:5]]
    if len(bn.output) > 1 and any(bn.output[1:]) or any(a is None for a in arrays):
        return None
    gamma, beta, mean, var = (a.astype(np.float64) for a in arrays)
    scale = gamma / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold an inference BatchNormalization into the Conv or Gemm that alone feeds it."""
    graph = model.graph

    def rule(view: GraphView, bn: onnx.NodeProto) -> bool:
        if bn.op_type != "BatchNormalization":
            return False
        prev = view.producer.get(bn.input[0])
        if prev is None or view.sole_consumer(bn.input[0]) != bn:
            return False
        params = _batchnorm_params(view, bn)
        if params is None:
            return False
        scale, shift = params
        if prev.op_type == "Conv":
            weight = view.array(prev.input[1])
            bias = view.array(prev.input[2]) if len(prev.input) > 2 and prev.input[2] else None
            if weight is None or (len(prev.input) > 2 and prev.input[2] and bias is None):
                return False
            new_w = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
        elif prev.op_type == "Gemm":
            weight = view.array(prev.input[1])
            bias = view.array(prev.input[2]) if len(prev.input) > 2 and prev.input[2] else None
            if (
                weight is None
                or _attr(prev, "alpha", 1.0) != 1.0
                or _attr(prev, "beta", 1.0) != 1.0
                or (len(prev.input) > 2 and prev.input[2] and bias is None)
            ):
                return False
            new_w = weight * (scale[:, None] if _attr(prev, "transB", 0) else scale[None, :])
        else:
            return False
        dtype = weight.dtype
        n = scale.shape[0]
        old_bias = np.zeros(n) if bias is None else np.broadcast_to(bias, (n,))
        new_b = old_bias * scale + shift
        w_name = view.unique(f"{prev.input[1]}_bnfold")
        b_name = view.unique(f"{bn.input[2]}_bnfold")
        view.set_initializer(w_name, new_w.astype(dtype))
        view.set_initializer(b_name, new_b.astype(dtype))
        prev.input[1] = w_name
        if len(prev.input) > 2:
            prev.input[2] = b_name
        else:
            prev.input.append(b_name)
        prev.output[0] = bn.output[0]
        _remove(graph, [bn])
        return True

    return _rewrite_each(graph, rule)


def remove_unused(model: onnx.ModelProto) -> int:
    """Drop nodes no graph output depends on and initializers nothing reads."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(n for n in node.input if n)
    removed = len(graph.node) - len(keep)
    _set_nodes(graph, list(reversed(keep)))
    inits = [copy.deepcopy(t) for t in graph.initializer if t.name in needed]
    removed += len(graph.initializer) - len(inits)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return removed


def optimize(model: onnx.ModelProto) -> dict[str, int]:
    """Run every rewrite in order; returns {rewrite: sites changed}."""
    report = {}
    report["drop_noops"] = drop_noops(model)
    report["fuse_matmul_add"] = fuse_matmul_add(model)
    report["fold_constants"] = fold_constants(model)
    report["fold_batchnorm"] = fold_batchnorm(model)
    report["fold_constants"] += fold_constants(model)
    report["fuse_matmul_add"] += fuse_matmul_add(model)
    report["remove_unused"] = remove_unused(model)
    return report
