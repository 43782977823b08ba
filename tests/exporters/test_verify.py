"""Verification compares onnxruntime with the engine and fails loudly above tolerance."""

from __future__ import annotations

import numpy as np
from onnx import helper

from exporters.verify import errors, random_inputs, verify_parity, verify_quantized
from tests.exporters.onnx_builders import model

W = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
MATMUL = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", ["batch", 4])],
               [("y", ["batch", 3])], {"w": W}).SerializeToString()  # fmt: skip
EXAMPLE = np.ones((3, 4), np.float32)


def test_errors_are_max_abs_and_normwise_relative():
    ref = [np.array([[1.0, -4.0]]), np.array([2.0])]
    got = [np.array([[1.5, -4.0]]), np.array([2.0])]
    assert errors(ref, got) == (0.5, 0.125)


def test_matching_model_passes_at_batch_sizes_other_than_the_example():
    report = verify_parity(MATMUL, lambda x: [x @ W], EXAMPLE, batch_sizes=(1, 7))
    assert report.ok
    assert [c.batch for c in report.checks] == [1, 7]
    assert all(c.max_rel < 1e-6 for c in report.checks)
    assert "max rel err" in report.table()


def test_a_wrong_model_fails_and_the_table_says_so():
    report = verify_parity(MATMUL, lambda x: [x @ W * 1.001], EXAMPLE, samples=EXAMPLE)
    assert not report.ok
    assert report.checks[-1].what == "dataset samples"
    assert "FAIL" in report.table()


def test_quantized_model_is_judged_by_accuracy():
    labels = np.array([0, 1, 2, 0])
    samples = np.eye(4, dtype=np.float32)
    scores = samples @ W
    flipped = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", ["batch", 4])],
                    [("y", ["batch", 3])], {"w": -W}).SerializeToString()  # fmt: skip
    same = verify_quantized(MATMUL, MATMUL, EXAMPLE, samples=samples, labels=labels)
    assert same.ok and "0.00 points" in same.checks[0].note
    worse = verify_quantized(MATMUL, flipped, EXAMPLE, samples=samples, labels=labels)
    expected = np.mean(np.argmax(scores, 1) == labels) - np.mean(np.argmax(-scores, 1) == labels)
    assert (not worse.ok) == (expected * 100 > 1.0)


def test_random_integer_inputs_stay_within_the_example_range():
    x = random_inputs(np.array([[0, 9], [3, 4]]), 50, np.random.default_rng(0))
    assert x.shape == (50, 2) and x.dtype == np.int64 and x.min() >= 0 and x.max() <= 9
