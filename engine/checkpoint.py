"""Checkpoints without pickle: a folder with weights as .npz and a JSON description.

Layout of a checkpoint folder:

- `checkpoint.json`: format version; `model` (how to rebuild it: a Sequential as its list of
  layers, any other Module as `"module:Class"` plus constructor kwargs); `weights_sha256` (a
  content hash of the weights, see `weights_hash`); `tensors` (name -> shape, dtype); the
  optional model description `input` (`shape` of one sample without the batch dimension,
  `dtype`, `description` of the expected scaling) and `labels` (class names); training state
  (`epoch`, `optimizer` class and hyperparameters, `scheduler`, the `engine.random` state);
  and the caller's `meta`.
- `weights.npz`: parameters and buffers by state_dict key.
- `optimizer.npz` (when an optimizer was saved): its per-parameter arrays.

Both .npz files are read with `allow_pickle=False`. Files are written under temporary names and
renamed into place, checkpoint.json last, so a folder with a checkpoint.json is complete.
Rebuilding imports only `engine.nn.Module` subclasses.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import random as engine_random
from engine.nn import Module, Sequential
from engine.optim import Optimizer

FORMAT = "tapeserve-checkpoint"
FORMAT_VERSION = 1
DESCRIPTION_FILE = "checkpoint.json"
WEIGHTS_FILE = "weights.npz"
OPTIMIZER_FILE = "optimizer.npz"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, or does not match the model."""


@dataclass
class Checkpoint:
    """What `load` returns: the model plus the checkpoint's description and training state."""

    model: Module
    description: dict[str, Any]
    path: Path
    epoch: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        shape = (self.description.get("input") or {}).get("shape")
        return None if shape is None else tuple(shape)

    @property
    def labels(self) -> list[str] | None:
        return self.description.get("labels")


# ----- weights hash --------------------------------------------------------------------------
def weights_hash(state: dict[str, np.ndarray]) -> str:
    """sha256 over the weights in sorted key order: key, dtype, shape and little-endian bytes."""
    h = hashlib.sha256()
    for key in sorted(state):
        a = np.ascontiguousarray(state[key])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(key.encode())
        h.update(f"|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ----- model description ---------------------------------------------------------------------
def class_path(obj: type) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def model_spec(model: Module) -> dict[str, Any]:
    """How to rebuild `model`: JSON-able, read back by `build_model`."""
    if isinstance(model, Sequential):
        return {
            "class": class_path(Sequential),
            "layers": [{"name": n, **model_spec(m)} for n, m in model.named_children()],
        }
    return {"class": class_path(type(model)), "kwargs": _encode(model.init_args, type(model))}


def _encode(value: Any, owner: type) -> Any:
    if isinstance(value, Module):
        return {"__module__": model_spec(value)}
    if isinstance(value, dict):
        return {str(k): _encode(v, owner) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, owner) for v in value]
    if isinstance(value, type) and issubclass(value, np.generic) or isinstance(value, np.dtype):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CheckpointError(
        f"{owner.__name__} was constructed with {type(value).__name__} {value!r}, which a "
        "checkpoint cannot record; construct it from numbers, strings, lists or modules"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__module__"}:
            return build_model(value["__module__"])
        if set(value) == {"__dtype__"}:
            return np.dtype(value["__dtype__"]).type
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


def _import_module_class(path: str) -> type[Module]:
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise CheckpointError(f"model class {path!r} is not of the form 'package.module:Class'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"cannot import model class {path!r}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Module)):
        raise CheckpointError(f"{path!r} is not an engine.nn.Module subclass")
    return obj


def build_model(spec: dict[str, Any]) -> Module:
    """Construct an (untrained) model from a `model_spec` description."""
    cls = _import_module_class(spec["class"])
    if "layers" in spec:
        layers = OrderedDict((layer["name"], build_model(layer)) for layer in spec["layers"])
        positional = list(layers) == [str(i) for i in range(len(layers))]
        return cls(list(layers.values())) if positional else cls(layers)
    kwargs = _decode(spec.get("kwargs", {}))
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise CheckpointError(f"cannot construct {spec['class']} with {kwargs}: {exc}") from exc


# ----- save ----------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def save(
    path: str | os.PathLike[str],
    model: Module,
    optimizer: Optimizer | None = None,
    *,
    scheduler: Any = None,
    epoch: int | None = None,
    input_shape: tuple[int, ...] | list[int] | None = None,
    input_dtype: str = "float32",
    input_description: str | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `model` (and optionally optimizer/scheduler state) to the folder `path`.

    Returns the JSON description that was written.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    description: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model_spec(model),
        "weights": WEIGHTS_FILE,
        "weights_sha256": weights_hash(state),
        "tensors": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in state.items()},
    }
    if input_shape is not None:
        description["input"] = {
            "shape": [int(d) for d in input_shape],
            "dtype": input_dtype,
            "description": input_description or "",
        }
    if labels is not None:
        description["labels"] = [str(label) for label in labels]
    if epoch is not None:
        description["epoch"] = int(epoch)
    if optimizer is not None:
        opt = optimizer.state_dict()
        arrays, scalars = {}, {}
        for index, entries in opt["state"].items():
            for name, value in entries.items():
                if isinstance(value, np.ndarray):
                    arrays[f"{index}/{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = _jsonable(value)
        description["optimizer"] = {
            "class": class_path(type(optimizer)),
            "param_groups": _jsonable(opt["param_groups"]),
            "scalars": scalars,
            "state": OPTIMIZER_FILE,
        }
        _atomic_write(folder / OPTIMIZER_FILE, lambda f: np.savez(f, **arrays))
    if scheduler is not None:
        description["scheduler"] = {
            "class": class_path(type(scheduler)),
            "state": _jsonable(scheduler.state_dict()),
        }
    description["rng_state"] = _jsonable(engine_random.get_state())
    description["meta"] = _jsonable(meta or {})
    _atomic_write(folder / WEIGHTS_FILE, lambda f: np.savez(f, **state))
    text = json.dumps(description, indent=2, sort_keys=False) + "\n"
    _atomic_write(folder / DESCRIPTION_FILE, lambda f: f.write(text.encode()))
    return description


# ----- load ----------------------------------------------------------------------------------
def describe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint's JSON description without loading weights."""
    file = Path(path) / DESCRIPTION_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint folder: {DESCRIPTION_FILE} is missing")
    try:
        description = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from exc
    if description.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a {FORMAT} description")
    if description.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has format version {description['format_version']}; this engine reads "
            f"up to {FORMAT_VERSION}"
        )
    return description


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {file}: {exc}") from exc


def load(
    path: str | os.PathLike[str],
    model: Module | None = None,
    optimizer: Optimizer | None = None,
    *,
    scheduler: Any = None,
    restore_rng: bool = False,
    verify_hash: bool = True,
) -> Checkpoint:
    """Load a checkpoint folder.

    Without `model`, the model is rebuilt from the description. An `optimizer` or `scheduler`
    given here gets its saved state; `restore_rng` also restores `engine.random`'s generator,
    so resumed training draws the same dropout masks as an uninterrupted run.
    """
    folder = Path(path)
    description = describe(folder)
    state = _read_npz(folder / description.get("weights", WEIGHTS_FILE))
    if verify_hash and weights_hash(state) != description.get("weights_sha256"):
        raise CheckpointError(f"{folder}: weights do not match the recorded weights_sha256")
    if model is None:
        model = build_model(description["model"])
        float_dtypes = {v.dtype for v in state.values() if v.dtype.kind == "f"}
        if len(float_dtypes) == 1 and float_dtypes != {np.dtype(np.float32)}:
            model.to(float_dtypes.pop())
    try:
        model.load_state_dict(state, strict=True)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{folder}: {exc}") from exc
    if optimizer is not None:
        saved = description.get("optimizer")
        if saved is None:
            raise CheckpointError(f"{folder} holds no optimizer state")
        if saved["class"] != class_path(type(optimizer)):
            raise CheckpointError(
                f"{folder} holds {saved['class']} state, not {class_path(type(optimizer))}"
            )
        arrays = _read_npz(folder / saved["state"])
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in arrays.items():
            index, _, name = key.partition("/")
            per_param.setdefault(int(index), {})[name] = value
        for index, entries in saved["scalars"].items():
            per_param.setdefault(int(index), {}).update(entries)
        optimizer.load_state_dict({"state": per_param, "param_groups": saved["param_groups"]})
    if scheduler is not None:
        saved = description.get("scheduler")
        if saved is None:
            raise CheckpointError(f"{folder} holds no scheduler state")
        scheduler.load_state_dict(saved["state"])
    if restore_rng and "rng_state" in description:
        engine_random.set_state(description["rng_state"])
    return Checkpoint(
        model=model,
        description=description,
        path=folder,
        epoch=description.get("epoch"),
        meta=description.get("meta", {}),
    )
