"""Smoke tests of the primitives' ONNX lowering rules: trace an engine function, lower each
node with the exporter's LoweringContext, run the graph in onnxruntime, compare with the engine.
(The exporter's own tests cover every primitive through whole models.)"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import engine
import engine.functional as F
from engine import Tensor
from exporters.trace import LoweringContext


def lower(fn, inputs: list[np.ndarray], opset: int, batch_symbolic: bool = False):
    """An ONNX model for fn with graph inputs x0, x1, ... (float32)."""
    tensors = [Tensor(a) for a in inputs]
    with engine.tracing.trace() as tr, engine.no_grad():
        out = fn(*tensors)
    ctx = LoweringContext(opset=opset)
    names = {id(t): ctx.reserve(f"x{i}") for i, t in enumerate(tensors)}
    for node in tr.nodes:
        ins = []
        for t in node.inputs:
            if id(t) not in names:
                names[id(t)] = ctx.const(t.data, "const")
            ins.append(names[id(t)])
        result = node.op.onnx(ctx, ins, node)
        names[id(node.outputs[0])] = result if isinstance(result, str) else result[0]
    ctx.nodes.append(helper.make_node("Identity", [names[id(out)]], ["y"]))

    def info(name, shape, dtype=TensorProto.FLOAT):
        dims = ["batch", *shape[1:]] if batch_symbolic else list(shape)
        return helper.make_tensor_value_info(name, dtype, dims)

    out_type = helper.np_dtype_to_tensor_dtype(out.dtype)
    graph = helper.make_graph(
        ctx.nodes,
        "t",
        [info(f"x{i}", a.shape) for i, a in enumerate(inputs)],
        [helper.make_tensor_value_info("y", out_type, None)],
        ctx.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model, out.data


def run(model, inputs):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {f"x{i}": a for i, a in enumerate(inputs)})[0]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


LOWERING_CASES = {
    "getitem_step_none_ellipsis": (lambda x: x[1:, ::-2, None, ..., -1], [rand(3, 5, 4)]),
    "getitem_int_array": (lambda x: x[:, [2, 0, 2]], [rand(2, 4)]),
    "gelu": (F.gelu, [rand(3, 4) * 2]),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), [rand(3, 4) * 2]),
    "reductions": (
        lambda x: x.mean((1, 2), keepdim=True) + x.max(2, keepdim=True).sum(1, True),
        [rand(2, 3, 4)],
    ),  # fmt: skip
    "conv_groups_dilation": (
        lambda x, w: F.conv2d(x, w, stride=(2, 1), padding=(2, 1), dilation=2, groups=2),
        [rand(2, 4, 9, 8), rand(6, 2, 3, 2, seed=1)],
    ),
    "pools": (
        lambda x: (
            F.max_pool2d(x, 3, 2, 1).sum(1, True)
            + F.avg_pool2d(x, 3, 2, 1, count_include_pad=False).sum(1, True)
        ),
        [rand(2, 3, 7, 7)],
    ),
    "adaptive_avg": (lambda x: F.adaptive_avg_pool2d(x, (2, 3)), [rand(2, 3, 4, 6)]),
    "batch_norm_eval": (
        lambda x: F.batch_norm(
            x,
            Tensor(rand(3, seed=1)),
            Tensor(np.abs(rand(3, seed=2)) + 0.5),
            Tensor(rand(3, seed=3)),
            Tensor(rand(3, seed=4)),
        ),
        [rand(2, 3, 2, 2)],
    ),  # fmt: skip
    "embedding_nll": (
        lambda w: F.nll_loss(
            F.log_softmax(F.embedding(np.array([[1, 0], [2, 2]]), w), 2).permute(0, 2, 1),
            np.array([[0, 3], [1, 2]]),
            reduction="sum",
        ),
        [rand(3, 4)],
    ),  # fmt: skip
    "compare_where_cast_clip": (
        lambda x: engine.where(x > 0.2, x.clip(max=0.9), (x <= -1).float() - x.clip(min=-0.5)),
        [rand(4, 5)],
    ),
}


@pytest.mark.parametrize("opset", [13, 17, 18, 20])
@pytest.mark.parametrize("name", sorted(LOWERING_CASES))
def test_lowering_matches_engine(name, opset):
    fn, inputs = LOWERING_CASES[name]
    model, expected = lower(fn, inputs, opset)
    np.testing.assert_allclose(run(model, inputs), expected, rtol=1e-5, atol=1e-5)


def test_gelu_uses_the_native_op_only_from_opset_20():
    ops = {o: [n.op_type for n in lower(F.gelu, [rand(2, 3)], o)[0].graph.node] for o in (17, 20)}
    assert "Gelu" in ops[20] and "Erf" not in ops[20]
    assert "Gelu" not in ops[17] and "Erf" in ops[17]


def test_reshape_keeps_the_batch_dimension_symbolic():
    w = rand(4, 3, 3, 3, seed=1)
    lin = rand(5, 4 * 2 * 2, seed=2)

    def cnn(x):
        h = F.max_pool2d(F.relu(F.conv2d(x, Tensor(w), padding=1)), 2)
        return F.linear(h.flatten(1), Tensor(lin)).reshape(-1, 5, 1).squeeze(-1)

    model, _ = lower(cnn, [rand(3, 3, 4, 4)], 17, batch_symbolic=True)
    other = rand(7, 3, 4, 4, seed=9)
    np.testing.assert_allclose(run(model, [other]), cnn(Tensor(other)).data, rtol=1e-5, atol=1e-5)


def test_unsupported_lowerings_say_why():
    with pytest.raises(NotImplementedError, match="eval"):
        lower(lambda x: F.batch_norm(x, None, None, training=True), [rand(4, 2)], 17)
    with pytest.raises(NotImplementedError, match="divide"):
        lower(lambda x: F.adaptive_avg_pool2d(x, 3), [rand(1, 1, 5, 5)], 17)
    # a max-pool derivative has the example's winners baked in: refused by name
    from engine.autodiff import grad

    def saliency(x):
        with engine.enable_grad():
            return grad(lambda y: F.max_pool2d(y, 2).sum())(x)

    with pytest.raises(NotImplementedError, match="max_pool2d_s(elect|catter) .*derivatives"):
        lower(saliency, [rand(1, 1, 4, 4)], 17)


def test_the_gradient_of_a_convolution_exports():
    """d/dx of sum(tanh(conv(x, w))) lowered to ONNX (col2im as a one-hot ConvTranspose)."""
    from engine.autodiff import grad

    w = Tensor(rand(3, 2, 3, 3, seed=4))

    def input_gradient(x):
        with engine.enable_grad():
            return grad(lambda y: F.conv2d(y, w, padding=1).tanh().sum())(x)

    x = rand(2, 2, 5, 5)
    model, expected = lower(input_gradient, [x], 17)
    np.testing.assert_allclose(run(model, [x]), expected, rtol=1e-5, atol=1e-6)
