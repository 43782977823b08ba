"""Export refuses clearly: the message names the op, the module and what to change."""

from __future__ import annotations

import numpy as np
import pytest

import engine.nn as nn
from engine.ops import REGISTRY
from exporters.export import export_model, ir_version_for, runtime_ir_version
from exporters.trace import ExportError

X = np.ones((3, 4), np.float32)


def model():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU())


def test_an_op_without_lowering_names_the_op_and_the_module(monkeypatch):
    monkeypatch.setattr(REGISTRY["relu"], "onnx", None)
    with pytest.raises(ExportError, match=r"op 'relu' from module '1' has no ONNX lowering"):
        export_model(model(), X)


def test_a_failing_lowering_rule_is_reported_with_the_opset(monkeypatch):
    def refuse(ctx, inputs, node):
        raise NotImplementedError("needs opset 99")

    monkeypatch.setattr(REGISTRY["relu"], "onnx", staticmethod(refuse))
    with pytest.raises(ExportError, match=r"'relu' from module '1' at opset 17 failed: needs"):
        export_model(model(), X)


def test_a_batch_of_one_is_refused_as_example():
    with pytest.raises(ExportError, match="batch of 2 or more"):
        export_model(model(), X[:1])


@pytest.mark.parametrize("opset", [7, 12])
def test_opsets_below_13_are_refused(opset):
    with pytest.raises(ExportError, match=f"opset {opset} is not supported"):
        export_model(model(), X, opset=opset)


def test_ir_version_is_what_onnxruntime_loads():
    ir = runtime_ir_version()
    assert 10 <= ir <= 13  # onnxruntime 1.31 loads up to 13
    assert ir_version_for(17) == ir
    proto, _ = export_model(model(), X)
    assert proto.ir_version == ir and proto.producer_name == "tapeserve"


def test_an_opset_beyond_the_runtime_ir_is_refused(monkeypatch):
    import exporters.export

    monkeypatch.setattr(exporters.export, "runtime_ir_version", lambda: 8)  # onnxruntime < 1.10
    assert ir_version_for(17) == 8
    with pytest.raises(
        ExportError, match="opset 21 needs ONNX IR version 10.*choose a lower opset"
    ):
        ir_version_for(21)
