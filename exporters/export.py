"""The export pipeline: trace -> rewrite -> check -> verify -> (quantize) -> publish.

`export_model` turns an in-memory engine model into a checked ONNX model; `export_to_repository`
adds verification and the atomic write into a model repository, and is what `tapeserve export`
runs. A model that fails verification is not published, so a server watching the repository
never loads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from exporters import rewrites
from exporters.repository import atomic_write, atomic_write_json, publish_version
from exporters.trace import BATCH, ExportError, build_graph, run_model
from exporters.verify import DEFAULT_RTOL, Report, verify_parity, verify_quantized
from serve.lifecycle.names import validate_model_name

DEFAULT_OPSET = 17
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.txt"
# Checkpoint meta keys copied into the model's "training" metadata (how to reproduce it).
TRAINING_KEYS = ("recipe", "seed", "epochs", "test_accuracy")


def tapeserve_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tapeserve")
    except PackageNotFoundError:
        return "0+unknown"


@lru_cache(maxsize=1)
def runtime_ir_version() -> int:
    """The newest ONNX IR version the installed onnxruntime loads, found by trying each."""
    last_error = ""
    for ir in range(onnx.IR_VERSION, 6, -1):
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [])
        graph.output.append(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1]))
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        probe.ir_version = ir
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception as exc:  # onnxruntime raises its own exception types
            last_error = str(exc)
    raise ExportError(f"onnxruntime {ort.__version__} loads no IR version >= 7: {last_error}")


def ir_version_for(opset: int) -> int:
    """The IR version to write: what onnxruntime accepts, provided the opset allows it."""
    needed = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    ir = min(onnx.IR_VERSION, runtime_ir_version())
    if ir < needed:
        raise ExportError(
            f"opset {opset} needs ONNX IR version {needed}, but onnxruntime {ort.__version__} "
            f"loads at most {ir}: choose a lower opset"
        )
    return ir


def check(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx's full checker and strict shape inference; returns the shape-inferred model."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails the ONNX checker: {exc}") from exc


def export_model(
    model: Any,
    example: np.ndarray,
    *,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
    input_name: str = "input",
    output_names: Sequence[str] | None = None,
    optimize: bool = True,
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Trace, lower, rewrite and check `model`; returns (model, {rewrite: sites changed})."""
    proto = build_graph(
        model, example, opset=opset, input_name=input_name, output_names=output_names
    )
    done = rewrites.optimize(proto) if optimize else {}
    proto.ir_version = ir_version_for(opset)
    proto.producer_name = "tapeserve"
    proto.producer_version = tapeserve_version()
    props = {"producer": f"tapeserve {tapeserve_version()}", "opset": str(opset)}
    props.update(metadata or {})
    helper.set_model_props(proto, props)
    check(proto)
    return proto, done


# -- checkpoints -----------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What export needs from an engine checkpoint."""

    model: Any
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"
    labels: list[str] | None = None
    input_description: str | None = None
    weights_hash: str | None = None
    dataset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model from an engine checkpoint folder and read its description."""
    from engine import checkpoint as engine_checkpoint

    loaded = engine_checkpoint.load(path)
    description = loaded.description
    spec = description.get("input") or {}
    meta = dict(loaded.meta or {})
    return Checkpoint(
        model=loaded.model,
        input_shape=loaded.input_shape,
        input_dtype=spec.get("dtype") or "float32",
        labels=loaded.labels,
        input_description=spec.get("description") or None,
        weights_hash=description.get("weights_sha256"),
        dataset=meta.get("dataset"),
        extra=meta,
    )


def dataset_key(text: str | None) -> str | None:
    """The bundled dataset a name or a checkpoint's dataset description refers to."""
    if text and (text == "digits" or "load_digits" in text):
        return "digits"
    return None


def dataset_samples(
    name: str, input_shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held-out x, held-out y, train x for calibration) of a bundled dataset, shaped as the
    model's input."""
    if dataset_key(name) is None:
        raise ExportError(f"unknown dataset {name!r}; bundled datasets: digits")
    from engine.datasets import load_digits

    data = load_digits()
    shape = (-1, *input_shape)
    return data.x_test.reshape(shape), data.y_test, data.x_train.reshape(shape)


# -- the whole command -------------------------------------------------------------------------


@dataclass
class ExportResult:
    path: Path
    version: int
    reports: list[Report]
    rewrites: dict[str, int]
    quantization: str | None = None
    summary: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.reports)


def describe(model: bytes) -> str:
    """One line: opset, IR version, signature and size, as the server will see the model."""
    proto = onnx.load_from_string(model)

    def sig(values) -> str:
        def dims(v) -> str:
            return ",".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)

        return ", ".join(f"{v.name}[{dims(v)}]" for v in values)

    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return (
        f"opset {opset}, IR {proto.ir_version}, {sig(proto.graph.input)} -> "
        f"{sig(proto.graph.output)}, {len(proto.graph.node)} nodes, {len(model) / 1024:.0f} KiB"
    )


def _write_config(model_dir: Path, max_batch_size: int | None) -> None:
    """Create or update config.json, keeping every setting a user already made."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    if max_batch_size is not None:
        config["max_batch_size"] = max_batch_size
    elif "max_batch_size" not in config:
        config["max_batch_size"] = 64
    atomic_write_json(path, config)


def export_to_repository(
    checkpoint: Checkpoint,
    repository: str | Path,
    name: str,
    *,
    version: int | None = None,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    max_batch_size: int | None = None,
    example_shape: Sequence[int] | None = None,
    example_batch: int = 3,
    dataset: str | None = None,
    rtol: float = DEFAULT_RTOL,
    max_accuracy_drop: float = 1.0,
    overwrite: bool = False,
    seed: int = 0,
) -> ExportResult:
    """Export a checkpoint into DIR/NAME/<version>/model.onnx after verifying it.

    When verification fails the result has `ok` False and nothing is published."""
    validate_model_name(name)
    shape = tuple(example_shape or checkpoint.input_shape or ())
    if not shape:
        raise ExportError("the checkpoint does not record its input shape: pass --example-shape")
    if example_batch < 2:
        raise ExportError("the example batch must be 2 or more")
    rng = np.random.default_rng(seed)
    dataset = dataset or dataset_key(checkpoint.dataset)
    samples = labels = calibration = None
    if dataset:
        samples, labels, calibration = dataset_samples(dataset, shape)
        example = samples[:example_batch].astype(checkpoint.input_dtype)
    elif np.issubdtype(np.dtype(checkpoint.input_dtype), np.integer):  # indices: 0 and 1 exist
        example = rng.integers(0, 2, (example_batch, *shape)).astype(checkpoint.input_dtype)
    else:
        example = rng.standard_normal((example_batch, *shape)).astype(checkpoint.input_dtype)
    metadata = {"input_shape": json.dumps([BATCH, *shape])}
    if checkpoint.weights_hash:
        metadata["checkpoint_hash"] = checkpoint.weights_hash
    if checkpoint.labels:
        metadata["labels"] = json.dumps(checkpoint.labels)
    if checkpoint.input_description:
        metadata["input_description"] = checkpoint.input_description
    training = {k: checkpoint.extra[k] for k in TRAINING_KEYS if k in checkpoint.extra}
    if training:
        metadata["training"] = json.dumps(training)
    proto, done = export_model(checkpoint.model, example, opset=opset, metadata=metadata)
    model_bytes = proto.SerializeToString()

    def engine_fn(x: np.ndarray) -> list[np.ndarray]:
        return run_model(checkpoint.model, x)

    sizes = [b for b in (1, example_batch + 4) if b != example_batch]
    try:
        reports = [
            verify_parity(
                model_bytes, engine_fn, example, batch_sizes=sizes, samples=samples, rtol=rtol
            )
        ]
    except Exception as exc:  # onnxruntime refuses or fails on the model
        msg = f"onnxruntime {ort.__version__} cannot run the exported model: {exc}"
        raise ExportError(msg) from exc
    method = None
    if quantize:
        if quantize != "int8":
            raise ExportError(f"unknown quantization {quantize!r}; supported: int8")
        from exporters.quantize import quantize_int8

        float_bytes = model_bytes
        model_bytes, method = quantize_int8(float_bytes, calibration)
        check(onnx.load_from_string(model_bytes))
        reports.append(
            verify_quantized(
                float_bytes,
                model_bytes,
                example,
                samples=samples,
                labels=labels,
                max_drop=max_accuracy_drop,
            )
        )
    result = ExportResult(Path(repository) / name, 0, reports, done, method, describe(model_bytes))
    if not result.ok:
        return result
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    _write_config(model_dir, max_batch_size)
    if checkpoint.labels:
        atomic_write(model_dir / LABELS_FILE, ("\n".join(checkpoint.labels) + "\n").encode())
    v, folder = publish_version(
        repository, name, {MODEL_FILE: model_bytes}, version, overwrite=overwrite
    )
    if (folder / MODEL_FILE).read_bytes() != model_bytes:
        raise ExportError(f"{folder / MODEL_FILE} does not read back as written")
    result.path, result.version = folder / MODEL_FILE, v
    return result
