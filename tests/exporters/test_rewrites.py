"""Each inference rewrite changes the graph as intended and leaves its outputs unchanged."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import helper

from exporters import rewrites
from tests.exporters.onnx_builders import model, op_types, run

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def assert_same_outputs(before, after, shape):
    onnx.checker.check_model(after, full_check=True)
    for batch in (1, 5):
        x = randn(batch, *shape)
        np.testing.assert_allclose(run(after, x), run(before, x), rtol=1e-5, atol=1e-5)


def test_drop_noops_removes_identity_and_dropout_and_keeps_output_name():
    m = model(
        [
            helper.make_node("Identity", ["x"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("Dropout", ["b"], ["c"]),
            helper.make_node("Identity", ["c"], ["y"]),
        ],
        [("x", ["batch", 4])],
        [("y", ["batch", 4])],
        {},
    )
    before = copy.deepcopy(m)
    assert rewrites.drop_noops(m) == 3
    assert op_types(m) == ["Relu"]
    assert [o.name for o in m.graph.output] == ["y"]
    assert_same_outputs(before, m, [4])


def test_identity_from_graph_input_to_output_is_kept():
    m = model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [("x", ["batch", 2])],
        [("y", ["batch", 2])],
        {},
    )
    assert rewrites.drop_noops(m) == 0
    assert op_types(m) == ["Identity"]


@pytest.mark.parametrize("transposed", [False, True])
def test_matmul_add_becomes_gemm(transposed):
    w = randn(3, 4) if transposed else randn(4, 3)
    nodes = [helper.make_node("MatMul", ["x", "wt" if transposed else "w"], ["m"])]
    if transposed:
        nodes.insert(0, helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]))
    nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
    m = model(nodes, [("x", ["batch", 4])], [("y", ["batch", 3])], {"w": w, "b": randn(3)})
    before = copy.deepcopy(m)
    assert rewrites.fuse_matmul_add(m) == 1
    rewrites.remove_unused(m)
    assert op_types(m) == ["Gemm"]
    gemm = m.graph.node[0]
    assert gemm.input[1] == "w"  # the original weight, not a transposed copy
    assert helper.get_attribute_value(gemm.attribute[0]) == int(transposed)
    assert_same_outputs(before, m, [4])


def test_matmul_on_rank3_input_is_not_fused():
    m = model(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        [("x", ["batch", 2, 4])],
        [("y", ["batch", 2, 3])],
        {"w": randn(4, 3), "b": randn(3)},
    )
    assert rewrites.fuse_matmul_add(m) == 0


def bn_inits(c):
    return {
        "gamma": randn(c),
        "beta": randn(c),
        "mean": randn(c),
        "var": np.abs(randn(c)) + 0.5,
    }


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_folds_into_conv(bias):
    conv_in = ["x", "w", "cb"] if bias else ["x", "w"]
    inits = {"w": randn(6, 2, 3, 3), **bn_inits(6)}
    if bias:
        inits["cb"] = randn(6)
    m = model(
        [
            helper.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1]),
            helper.make_node(
                "BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3
            ),
        ],
        [("x", ["batch", 2, 5, 5])],
        [("y", ["batch", 6, 5, 5])],
        inits,
    )
    before = copy.deepcopy(m)
    assert rewrites.fold_batchnorm(m) == 1
    rewrites.remove_unused(m)
    assert op_types(m) == ["Conv"]
    assert_same_outputs(before, m, [2, 5, 5])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_batchnorm_folds_into_gemm(trans_b):
    w = randn(3, 4) if trans_b else randn(4, 3)
    m = model(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=trans_b),
            helper.make_node("BatchNormalization", ["g", "gamma", "beta", "mean", "var"], ["y"]),
        ],
        [("x", ["batch", 4])],
        [("y", ["batch", 3])],
        {"w": w, "b": randn(3), **bn_inits(3)},
    )
    before = copy.deepcopy(m)
    assert rewrites.fold_batchnorm(m) == 1
    assert op_types(m) == ["Gemm"]
    assert_same_outputs(before, m, [4])


def test_batchnorm_after_relu_stays():
    m = model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("BatchNormalization", ["r", "gamma", "beta", "mean", "var"], ["y"]),
        ],
        [("x", ["batch", 3])],
        [("y", ["batch", 3])],
        bn_inits(3),
    )
    assert rewrites.fold_batchnorm(m) == 0


def test_constants_fold_and_unused_initializers_go():
    m = model(
        [
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
            helper.make_node("Mul", ["wt", "two"], ["w2"]),
            helper.make_node("MatMul", ["x", "w2"], ["y"]),
        ],
        [("x", ["batch", 4])],
        [("y", ["batch", 3])],
        {"w": randn(3, 4), "two": np.float32(2.0), "unused": randn(7)},
    )
    before = copy.deepcopy(m)
    assert rewrites.fold_constants(m) == 2
    assert rewrites.remove_unused(m) == 4  # w, two, the folded wt, unused
    assert op_types(m) == ["MatMul"]
    assert_same_outputs(before, m, [4])


def test_optimize_runs_every_rewrite_and_reports_counts():
    m = model(
        [
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "wt"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["g"]),
            helper.make_node("BatchNormalization", ["g", "gamma", "beta", "mean", "var"], ["d"]),
            helper.make_node("Dropout", ["d"], ["y"]),
        ],
        [("x", ["batch", 4])],
        [("y", ["batch", 3])],
        {"w": randn(3, 4), "b": randn(3), **bn_inits(3)},
    )
    before = copy.deepcopy(m)
    report = rewrites.optimize(m)
    assert op_types(m) == ["Gemm"]
    assert report["drop_noops"] == 1 and report["fuse_matmul_add"] == 1
    assert report["fold_batchnorm"] == 1
    assert_same_outputs(before, m, [4])
