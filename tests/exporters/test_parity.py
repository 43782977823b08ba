"""Every engine primitive and module type exports and matches the engine in onnxruntime.

Each case is traced at batch 3 and checked at batch 1 and 5 (other sizes than the example, so
a baked-in batch size fails) at the default opset, then again at the lowest and highest opsets
the exporter supports. Coverage tests make a new primitive or module without a case fail here.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import pytest

import engine.nn as nn
from engine.ops import REGISTRY
from exporters.export import export_model
from exporters.trace import op_name, run_model, trace_model
from exporters.verify import verify_parity
from tests.exporters.cases import ALL_CASES, MODULE_CASES, Case

BATCH_SIZES = (1, 5)
OPSETS = (13, 17, 21)


def export_and_verify(case: Case, opset: int) -> onnx.ModelProto:
    import engine

    engine.manual_seed(0)
    model = case.build()
    example = case.example()
    proto, _ = export_model(model, example, opset=opset)
    report = verify_parity(
        proto.SerializeToString(), lambda x: run_model(model, x), example,
        batch_sizes=BATCH_SIZES, rtol=1e-5,
    )  # fmt: skip
    assert report.ok, f"{case.name} at opset {opset}:\n{report.table()}"
    assert [c.batch for c in report.checks] == list(BATCH_SIZES)
    return proto


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_export_matches_engine(case, opset):
    proto = export_and_verify(case, opset)
    assert proto.opset_import[0].version == opset
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"


def test_every_primitive_has_a_parity_case():
    covered = set()
    for case in ALL_CASES:
        _, _, tr = trace_model(case.build(), case.example())
        covered.update(op_name(node.op) for node in tr.nodes)
    derivative_only = {name for name, p in REGISTRY.items() if p.derivative_only}
    assert set(REGISTRY) - covered - derivative_only == set()


def test_every_module_type_has_a_parity_case():
    module_types = {
        cls for _, cls in inspect.getmembers(nn, inspect.isclass) if issubclass(cls, nn.Module)
    } - {nn.Module}
    covered = {type(m) for case in MODULE_CASES for m in case.build().modules()}
    assert {t.__name__ for t in module_types - covered} == set()


def test_rewrites_leave_an_inference_graph():
    """The CNN case: BatchNorm folded, Dropout gone, every Linear a Gemm."""
    case = next(c for c in MODULE_CASES if c.name == "Sequential_cnn")
    ops = [n.op_type for n in export_and_verify(case, 17).graph.node]
    assert ops == ["Conv", "Relu", "MaxPool", "Reshape", "Gemm", "Relu", "Gemm"]


def test_lstm_is_unrolled_over_the_traced_steps():
    case = next(c for c in MODULE_CASES if c.name == "LSTM")
    proto = export_and_verify(case, 17)
    assert "LSTM" not in {n.op_type for n in proto.graph.node}
    assert len(proto.graph.output) == 3  # output, h_n, c_n
    assert np.array(case.example()).shape[1] == 4  # time steps fixed by the trace
