"""Every zoo member is what its framework made: onnxruntime run directly on the exported file
answers what the framework answers, at several batch sizes, and each member has the features it
stands for (dynamic batch, fused operators, FP16 tensors, QDQ nodes, ZipMap, data-dependent
rows, external data)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from modelzoo import MEMBERS
from modelzoo.model import error, run_onnxruntime


@pytest.mark.parametrize("name", list(MEMBERS))
def test_onnxruntime_answers_what_the_framework_answers(zoo, name):
    member = zoo(name)
    for batch, seed in ((1, 0), (5, 1)):
        feeds = member.inputs(batch=batch, seed=seed)
        member.check(member.reference(feeds), run_onnxruntime(member.path, feeds))


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _graph(member) -> onnx.ModelProto:
    return onnx.load(str(member.path), load_external_data=False)


@pytest.mark.parametrize("name", ["resnet50", "resnet50_fp16", "resnet50_int8"])
def test_resnet_variants_have_a_dynamic_batch_dimension(zoo, name):
    model = _graph(zoo(name))
    (x,) = model.graph.input
    assert isinstance(_dims(x)[0], str) and _dims(x)[1:] == [3, 32, 32]
    elem = x.type.tensor_type.elem_type
    assert elem == (onnx.TensorProto.FLOAT16 if name.endswith("fp16") else onnx.TensorProto.FLOAT)
    ops = {node.op_type for node in model.graph.node}
    if name.endswith("int8"):
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert "Conv" in ops


def test_bert_has_dynamic_batch_and_sequence(zoo):
    model = _graph(zoo("bert"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    for tensor in model.graph.input:
        assert tensor.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert _dims(tensor) == ["batch", "sequence"]
    assert [_dims(o) for o in model.graph.output] == [["batch", "sequence", 32], ["batch", 32]]
    member = zoo("bert")  # a longer sequence than the export's
    feeds = member.inputs(batch=3, seed=2, sequence=40)
    member.check(member.reference(feeds), run_onnxruntime(member.path, feeds))


def test_optimized_bert_runs_fused_microsoft_operators(zoo):
    member = zoo("bert_optimized")
    model = _graph(member)
    fused = {n.op_type for n in model.graph.node if n.domain == "com.microsoft"}
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization"} <= fused, fused
    # the optimizer imports operator sets no node uses, ai.onnx.preview among them
    imported = {o.domain for o in model.opset_import}
    used = {n.domain or "" for n in model.graph.node}
    assert "ai.onnx.preview" in imported - used


@pytest.mark.parametrize("name", ["sklearn_pipeline", "lightgbm"])
def test_tabular_exports_keep_zipmap_by_default(zoo, name):
    model = _graph(zoo(name))
    assert "ZipMap" in {n.op_type for n in model.graph.node}
    probabilities = model.graph.output[1]
    assert probabilities.type.WhichOneof("value") == "sequence_type"


def test_sklearn_pipeline_takes_string_categories(zoo):
    model = _graph(zoo("sklearn_pipeline"))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types == {"c0": 8, "c1": 8, "n0": 1, "n1": 1, "n2": 1}  # STRING and FLOAT


@pytest.mark.parametrize("name", ["detector", "nonzero"])
def test_output_rows_depend_on_the_data(zoo, name):
    member = zoo(name)
    rows = {
        run_onnxruntime(member.path, member.inputs(batch=1, seed=seed))[member.outputs[0]].shape[0]
        for seed in range(12)
    }
    assert len(rows) > 2, rows  # not the batch size: it varies with the values


def test_large_model_keeps_its_weights_in_an_aligned_external_data_file(zoo):
    member = zoo("large")
    model = _graph(member)
    data = member.path.parent / "model.onnx.data"
    total = 0
    for tensor in model.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.EXTERNAL
        info = {e.key: e.value for e in tensor.external_data}
        assert info["location"] == "model.onnx.data"
        assert int(info["offset"]) % 4096 == 0
        total += int(info["length"])
    assert data.stat().st_size >= total > 0
    assert member.path.stat().st_size < 4096  # the graph only


def test_error_measure():
    a = np.array([1.0, -2.0], np.float32)
    assert error(a, a) == 0
    assert error(a, a + np.float32(0.02)) == pytest.approx(0.01, rel=1e-3)
    assert error(a, a[:1]) == float("inf")
    assert error(np.array([1, 2]), np.array([1, 3])) == float("inf")
