"""The members of the zoo and how each is built into a model repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from modelzoo import bert, graphs, resnet, tabular
from modelzoo.model import ZooModel, save

Builder = Callable[[Path, str], ZooModel]


def _resnet50(directory: Path, size: str) -> ZooModel:
    model, data = resnet.exported(size)
    save(onnx.load_from_string(data), directory, {"max_batch_size": 32})
    return ZooModel(
        "resnet50", "torch.onnx (dynamo)", directory,
        inputs=lambda batch=1, seed=0: {"input": resnet.images(size, batch, seed)},
        reference=lambda feeds: {"logits": resnet.torch_logits(model, feeds["input"])},
        outputs=["logits"], max_error={"logits": 1e-4},
        notes="ResNet-50 (torchvision's definition), [N,3,H,W] FP32 -> logits [N,classes]",
    )  # fmt: skip


def _resnet50_fp16(directory: Path, size: str) -> ZooModel:
    model, data = resnet.exported(size)
    save(resnet.fp16(onnx.load_from_string(data)), directory, {"max_batch_size": 32})
    return ZooModel(
        "resnet50_fp16", "torch.onnx + onnxruntime float16 converter", directory,
        inputs=lambda batch=1, seed=0: {
            "input": resnet.images(size, batch, seed).astype(np.float16)
        },
        reference=lambda feeds: {
            "logits": resnet.torch_logits(model, feeds["input"].astype(np.float32))
        },
        outputs=["logits"], max_error={"logits": 2e-2},
        notes="FP16 weights, input and output",
    )  # fmt: skip


def _resnet50_int8(directory: Path, size: str) -> ZooModel:
    model, data = resnet.exported(size)
    version = directory / "1"
    version.mkdir(parents=True, exist_ok=True)
    source = version / "fp32.onnx.tmp"
    source.write_bytes(data)
    try:
        resnet.int8(str(source), str(version / "model.onnx"), size)
    finally:
        source.unlink()
    quantized = onnx.load(str(version / "model.onnx"))
    save(quantized, directory, {"max_batch_size": 32})
    return ZooModel(
        "resnet50_int8", "torch.onnx + onnxruntime.quantization (static QDQ)", directory,
        inputs=lambda batch=1, seed=0: {"input": resnet.images(size, batch, seed)},
        reference=lambda feeds: {"logits": resnet.torch_logits(model, feeds["input"])},
        outputs=["logits"], max_error={"logits": 0.25},
        notes="int8 per-channel weights, uint8 activations; FP32 input and output",
    )  # fmt: skip


def _bert_inputs(size: str):
    def make(batch: int = 1, seed: int = 0, sequence: int = 16) -> dict[str, np.ndarray]:
        return bert.tokens(size, batch, sequence, seed)

    return make


def _bert(directory: Path, size: str) -> ZooModel:
    model, data = bert.exported(size)
    save(onnx.load_from_string(data), directory, {"max_batch_size": 32})
    return ZooModel(
        "bert", "transformers BertModel + torch.onnx", directory,
        inputs=_bert_inputs(size),
        reference=lambda feeds: bert.torch_outputs(model, feeds),
        outputs=list(bert.OUTPUTS),
        max_error={"last_hidden_state": 1e-4, "pooler_output": 1e-4},
        notes="BERT-base shape; int64 input_ids/attention_mask/token_type_ids [N,S]",
    )  # fmt: skip


def _bert_optimized(directory: Path, size: str) -> ZooModel:
    model, data = bert.exported(size)
    version = directory / "1"
    version.mkdir(parents=True, exist_ok=True)
    source = version / "unfused.onnx.tmp"
    source.write_bytes(data)
    try:
        fused = bert.optimize(str(source), str(version / "model.onnx"), size)
    finally:
        source.unlink()
    save(onnx.load(str(version / "model.onnx")), directory, {"max_batch_size": 32})
    return ZooModel(
        "bert_optimized", "transformers + torch.onnx + onnxruntime transformer optimizer",
        directory,
        inputs=_bert_inputs(size),
        reference=lambda feeds: bert.torch_outputs(model, feeds),
        outputs=list(bert.OUTPUTS),
        max_error={"last_hidden_state": 1e-4, "pooler_output": 1e-4},
        notes="fused com.microsoft operators: "
        + ", ".join(f"{k} x{v}" for k, v in sorted(fused.items())),
    )  # fmt: skip


def _sklearn_pipeline(directory: Path, size: str) -> ZooModel:
    pipe, onnx_model = tabular.sklearn_pipeline(size)
    save(onnx_model, directory, None)
    return ZooModel(
        "sklearn_pipeline", "scikit-learn + skl2onnx (defaults: ZipMap on)", directory,
        inputs=lambda batch=1, seed=0: tabular.pipeline_rows(batch, seed),
        reference=lambda feeds: tabular.sklearn_reference(pipe, feeds),
        outputs=["output_label", "output_probability"],
        max_error={"output_label": 0, "output_probability": 1e-5},
        notes="OneHotEncoder on two string columns + StandardScaler -> LogisticRegression",
    )  # fmt: skip


def _lightgbm(directory: Path, size: str) -> ZooModel:
    model, onnx_model = tabular.lightgbm_classifier(size)
    save(onnx_model, directory, None)
    return ZooModel(
        "lightgbm", "LightGBM + onnxmltools (defaults: ZipMap on)", directory,
        inputs=lambda batch=1, seed=0: {"input": tabular.tree_rows(size, batch, seed)},
        reference=lambda feeds: tabular.classifier_reference(
            model, feeds["input"], "label", "probabilities"
        ),
        outputs=["label", "probabilities"],
        max_error={"label": 0, "probabilities": 1e-5},
        notes="3-class gradient-boosted trees (ai.onnx.ml TreeEnsembleClassifier)",
    )  # fmt: skip


def _xgboost(directory: Path, size: str) -> ZooModel:
    model, onnx_model = tabular.xgboost_classifier(size)
    save(onnx_model, directory, None)
    return ZooModel(
        "xgboost", "XGBoost + onnxmltools", directory,
        inputs=lambda batch=1, seed=0: {"input": tabular.tree_rows(size, batch, seed)},
        reference=lambda feeds: tabular.classifier_reference(
            model, feeds["input"], "label", "probabilities"
        ),
        outputs=["label", "probabilities"],
        max_error={"label": 0, "probabilities": 1e-5},
        notes="3-class gradient-boosted trees (ai.onnx.ml TreeEnsembleClassifier)",
    )  # fmt: skip


def _onnx_reference(path: Path) -> Callable[[dict], dict]:
    """onnx's reference evaluator: the framework of hand-written graphs."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(str(path))
    names = [o.name for o in onnx.load(str(path)).graph.output]
    return lambda feeds: dict(zip(names, evaluator.run(None, feeds), strict=True))


def _detector(directory: Path, size: str) -> ZooModel:
    save(graphs.detector(size), directory, None)
    return ZooModel(
        "detector", "onnx.helper (NonMaxSuppression)", directory,
        inputs=lambda batch=1, seed=0: graphs.detections(size, batch, seed),
        reference=_onnx_reference(directory / "1" / "model.onnx"),
        outputs=["selected_indices", "selected_boxes", "selected_scores"], batched=False,
        max_error={"selected_indices": 0},
        notes="output rows depend on the data; the batch index is in selected_indices[:, 0]",
    )  # fmt: skip


def _nonzero(directory: Path, size: str) -> ZooModel:
    save(graphs.nonzero(), directory, None)
    return ZooModel(
        "nonzero", "onnx.helper (NonZero, GatherND)", directory,
        inputs=lambda batch=1, seed=0: graphs.nonzero_rows(batch, seed),
        reference=_onnx_reference(directory / "1" / "model.onnx"),
        outputs=["indices", "values"], batched=False, max_error={"indices": 0, "values": 0},
        notes="output rows depend on the data",
    )  # fmt: skip


def _image_pool(directory: Path, size: str) -> ZooModel:
    save(graphs.image_pool(size), directory, {"max_batch_size": 32})
    return ZooModel(
        "image_pool", "onnx.helper (GlobalAveragePool)", directory,
        inputs=lambda batch=1, seed=0: {"input": graphs.images(size, batch, seed)},
        reference=_onnx_reference(directory / "1" / "model.onnx"),
        outputs=["mean"], max_error={"mean": 1e-5},
        notes="image-sized input, trivial compute: the request body is the cost",
    )  # fmt: skip


def _large(directory: Path, size: str) -> ZooModel:
    version = directory / "1"
    model = graphs.large(size, version)
    save(model, directory, {"max_batch_size": 16})
    return ZooModel(
        "large", "onnx.helper, external data", directory,
        inputs=lambda batch=1, seed=0: {"x": graphs.large_rows(size, batch, seed)},
        reference=lambda feeds: {"y": graphs.large_reference(version, model, feeds["x"])},
        outputs=["y"], max_error={"y": 1e-4},
        notes=f"{graphs.LARGE_SIZES[size].weight_bytes / 2**30:.2f} GiB of weights in "
        "model.onnx.data",
    )  # fmt: skip


MEMBERS: dict[str, Builder] = {
    "resnet50": _resnet50,
    "resnet50_fp16": _resnet50_fp16,
    "resnet50_int8": _resnet50_int8,
    "bert": _bert,
    "bert_optimized": _bert_optimized,
    "sklearn_pipeline": _sklearn_pipeline,
    "lightgbm": _lightgbm,
    "xgboost": _xgboost,
    "detector": _detector,
    "nonzero": _nonzero,
    "image_pool": _image_pool,
    "large": _large,
}


def build(name: str, repository: Path, size: str = "small") -> ZooModel:
    """Write member `name` as `repository/name/1/model.onnx` (+ config.json) at `size`
    ("small" for tests, "full" for the benchmark; the large model also has "medium")."""
    try:
        builder = MEMBERS[name]
    except KeyError:
        raise KeyError(f"no zoo member {name!r}; members: {', '.join(MEMBERS)}") from None
    return builder(Path(repository) / name, size if name == "large" else _plain(size))


def _plain(size: str) -> str:
    if size not in ("small", "full"):
        raise ValueError(
            f"size must be 'small' or 'full' (the large model also: 'medium'), got {size!r}"
        )
    return size
