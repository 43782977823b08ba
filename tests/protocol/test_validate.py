"""Requests checked against the model's tensor specs, with the messages users see."""

from __future__ import annotations

import numpy as np
import pytest

from serve.protocol.types import (
    InferInput,
    InferRequest,
    ProtocolError,
    RequestedOutput,
    TensorSpec,
)
from serve.protocol.validate import shape_matches, validate_request

INPUTS = [TensorSpec("x", "FP32", (-1, 784)), TensorSpec("mask", "BOOL", (-1,))]
OUTPUTS = [TensorSpec("y", "FP32", (-1, 10))]


def _input(name="x", datatype="FP32", shape=(2, 784)) -> InferInput:
    return InferInput(name, datatype, shape, np.zeros(0))


def _request(*inputs: InferInput, outputs=None) -> InferRequest:
    return InferRequest(id=None, inputs=list(inputs), outputs=outputs, binary_output=False)


def _message(req: InferRequest, max_batch_size: int = 8) -> str:
    with pytest.raises(ProtocolError) as info:
        validate_request(req, INPUTS, OUTPUTS, max_batch_size)
    assert info.value.status == 400
    return info.value.message


def test_valid_requests_pass() -> None:
    validate_request(_request(_input(), _input("mask", "BOOL", (2,))), INPUTS, OUTPUTS, 8)
    validate_request(
        _request(_input(), _input("mask", "BOOL", (2,)), outputs=[RequestedOutput("y", True)]),
        INPUTS,
        OUTPUTS,
        8,
    )
    # without batching, dimension 0 is not limited
    validate_request(
        _request(_input(shape=(100, 784)), _input("mask", "BOOL", (7,))), INPUTS, OUTPUTS, 0
    )


@pytest.mark.parametrize(
    "req,message",
    [
        (
            _request(_input(datatype="INT64"), _input("mask", "BOOL", (2,))),
            "input 'x': expected datatype FP32, got INT64",
        ),
        (
            _request(_input(shape=(2, 783)), _input("mask", "BOOL", (2,))),
            "input 'x': expected shape [-1, 784], got [2, 783]",
        ),
        (
            _request(_input(shape=(784,)), _input("mask", "BOOL", (2,))),
            "input 'x': expected shape [-1, 784], got [784]",
        ),
        (
            _request(_input(), _input("mask", "BOOL", (2,)), _input("z")),
            "unknown input 'z'; the model's inputs are: 'x', 'mask'",
        ),
        (
            _request(_input()),
            "missing input 'mask' (BOOL, shape [-1]); the model's inputs are: 'x', 'mask'",
        ),
        (
            _request(_input(), _input(), _input("mask", "BOOL", (2,))),
            "input 'x' is given more than once",
        ),
        (
            _request(_input(shape=(9, 784)), _input("mask", "BOOL", (9,))),
            "input 'x': batch size 9 exceeds the model's max_batch_size of 8",
        ),
        (
            _request(_input(shape=(2, 784)), _input("mask", "BOOL", (3,))),
            "inputs disagree on the batch dimension (dimension 0): 'x': 2, 'mask': 3",
        ),
        (
            _request(_input(), _input("mask", "BOOL", (2,)), outputs=[RequestedOutput("z", False)]),
            "unknown output 'z'; the model's outputs are: 'y'",
        ),
    ],
)
def test_rejections_name_the_problem(req: InferRequest, message: str) -> None:
    assert _message(req) == message


def test_shape_matches() -> None:
    assert shape_matches((-1, 3), (0, 3))
    assert shape_matches((), ())
    assert not shape_matches((-1, 3), (1, 3, 1))
    assert not shape_matches((2,), (3,))
