"""Per-model `config.json`: schema, defaults and validation (see docs/model-config.md).

A bad config never stops the server: `load_config` raises ConfigError with a message naming the
key and what was wrong, and the model becomes UNAVAILABLE with that reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serve.protocol.types import TensorSpec
from serve.settings import parse_device

CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """config.json is unreadable or holds an invalid value; the message says which and why."""


#: Triton's model-config data types (TYPE_STRING is the BYTES wire type) -> V2 datatype.
TRITON_TO_V2 = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
    "TYPE_BF16": "BF16",
}
V2_TO_TRITON = {v: k for k, v in TRITON_TO_V2.items()}

#: The model kinds a folder can hold, from Triton's `platform` / `backend` fields.
ONNX, PYTHON, ENSEMBLE = "onnx", "python", "ensemble"
_PLATFORMS = {"onnxruntime_onnx": ONNX, "ensemble": ENSEMBLE}
_BACKENDS = {"onnxruntime": ONNX, "python": PYTHON}
_IO_KEYS = {"name", "data_type", "dims", "label_filename", "optional", "padding_value"}
#: Keys of `dynamic_batching`: Triton's, and TF Serving's batching parameter for padding.
_DYNAMIC_BATCHING_KEYS = (
    "max_queue_delay_microseconds",
    "pad_variable_length_inputs",
    "padding_buckets",
)
_STEP_KEYS = {"model_name", "model_version", "input_map", "output_map"}


@dataclass
class ModelConfig:
    """Effective settings of one model (all versions share them)."""

    max_batch_size: int = 64
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = 1024
    default_timeout_ms: float = 0.0
    instance_count: int = 1
    version_policy: dict[str, Any] = field(default_factory=lambda: {"latest": 1})
    device: str | None = None
    warmup: bool | list[dict[str, Any]] = True
    intra_op_threads: int | None = None
    #: CUDA provider options (onnxruntime's names, see CUDA_OPTIONS), used when on a GPU.
    cuda: dict[str, Any] = field(default_factory=dict)
    #: TensorRT provider options (TENSORRT_OPTIONS); None: no TensorRT. `true` in the file is {}.
    tensorrt: dict[str, Any] | None = None
    # Triton's field names (docs/model-config.md#triton-fields), so a config.pbtxt translates
    # line by line: the model's kind, its declared tensors and an ensemble's steps.
    name: str | None = None
    platform: str | None = None
    backend: str | None = None
    input: list[dict[str, Any]] = field(default_factory=list)
    output: list[dict[str, Any]] = field(default_factory=list)
    ensemble_scheduling: dict[str, Any] | None = None
    #: Triton's `dynamic_batching` (`{}` or `{"max_queue_delay_microseconds": N,
    #: "pad_variable_length_inputs": true}`) and `instance_group` (`[{"count": N, "kind":
    #: "KIND_CPU"}]`): the same knobs as max_queue_delay_ms, pad_variable_length_inputs and
    #: instance_count, which they set.
    dynamic_batching: dict[str, Any] | None = None
    instance_group: list[dict[str, Any]] | None = None
    require_batching: bool = False
    share_weights: bool = True
    #: TF Serving's batching parameter: batch requests whose variable non-batch dimensions
    #: differ by padding them (each input's `padding_value`, default 0; serve.core.padding).
    pad_variable_length_inputs: bool = False
    #: Upper bounds of length buckets (ascending): with padding, requests batch only with
    #: requests of the same bucket on every padded axis, and then always (no cost model).
    padding_buckets: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The config as `/v2/models/{m}/config` shows it."""
        return asdict(self)

    @property
    def kind(self) -> str:
        """onnx, python or ensemble."""
        if self.platform is not None:
            return _PLATFORMS[self.platform]
        return _BACKENDS[self.backend] if self.backend is not None else ONNX

    @property
    def platform_name(self) -> str:
        """The `platform` model metadata shows, as Triton names it."""
        return {ONNX: "onnxruntime_onnx", PYTHON: "python", ENSEMBLE: "ensemble"}[self.kind]

    @property
    def backend_name(self) -> str:
        return {ONNX: "onnxruntime", PYTHON: "python", ENSEMBLE: ""}[self.kind]

    def padding_values(self) -> dict[str, Any]:
        """Input name -> the `padding_value` its `input` entry sets."""
        return {i["name"]: i["padding_value"] for i in self.input if "padding_value" in i}

    def label_files(self) -> dict[str, str]:
        """Output name -> label file (relative to the model folder) for the outputs naming one."""
        return {o["name"]: o["label_filename"] for o in self.output if o.get("label_filename")}


def declared_specs(config: ModelConfig, key: str) -> list[TensorSpec]:
    """The `input` or `output` tensors a config declares, as the server advertises them: a
    batching model's first dimension (-1) comes before Triton's `dims`."""
    batch = (-1,) if config.max_batch_size > 0 else ()
    return [
        TensorSpec(io["name"], TRITON_TO_V2[io["data_type"]], batch + tuple(io["dims"]))
        for io in getattr(config, key)
        if "data_type" in io
    ]


_BOOL, _COUNT, _POSITIVE, _TEXT = "a boolean", "an integer >= 0", "an integer >= 1", "a string"

#: CUDA provider options a config.json may set: what each accepts (a kind or the allowed values).
CUDA_OPTIONS: dict[str, Any] = {
    "device_id": _COUNT,
    "gpu_mem_limit": _POSITIVE,  # bytes the arena may hold
    "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
    "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"),
    "do_copy_in_default_stream": _BOOL,
    "use_tf32": _BOOL,
    "enable_cuda_graph": _BOOL,
}
#: TensorRT provider options a config.json may set.
TENSORRT_OPTIONS: dict[str, Any] = {
    "device_id": _COUNT,
    "trt_max_workspace_size": _POSITIVE,
    "trt_fp16_enable": _BOOL,
    "trt_int8_enable": _BOOL,
    "trt_engine_cache_enable": _BOOL,
    "trt_engine_cache_path": _TEXT,
    "trt_timing_cache_enable": _BOOL,
    "trt_builder_optimization_level": _COUNT,
}


def _provider_options(key: str, value: Any, known: dict[str, Any]) -> dict[str, Any]:
    """Validate one provider's options: known names only, each of the right kind."""
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be an object of provider options, got {json.dumps(value)}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ConfigError(
            f"{key}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    for name, option in value.items():
        kind = known[name]
        if isinstance(kind, tuple):
            ok = option in kind
            kind = "one of " + ", ".join(kind)
        elif kind == _BOOL:
            ok = isinstance(option, bool)
        elif kind == _TEXT:
            ok = isinstance(option, str) and option != ""
        else:
            minimum = 0 if kind == _COUNT else 1
            ok = isinstance(option, int) and not isinstance(option, bool) and option >= minimum
        if not ok:
            raise ConfigError(f"{key}.{name} must be {kind}, got {json.dumps(option)}")
    return dict(value)


def _number(key: str, value: Any, *, minimum: float, integer: bool) -> Any:
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigError(f"{key} must be {kind} >= {minimum:g}, got {json.dumps(value)}")
    if value < minimum:
        raise ConfigError(f"{key} must be {kind} >= {minimum:g}, got {value}")
    return value


def _version_policy(value: Any) -> dict[str, Any]:
    expected = 'expected {"latest": N}, {"all": true} or {"specific": [versions]}'
    if not isinstance(value, dict) or len(value) != 1:
        raise ConfigError(f"version_policy: {expected}, got {json.dumps(value)}")
    ((kind, arg),) = value.items()
    if kind == "latest":
        _number("version_policy.latest", arg, minimum=1, integer=True)
    elif kind == "all":
        if arg is not True:
            raise ConfigError(f"version_policy.all must be true, got {json.dumps(arg)}")
    elif kind == "specific":
        if not isinstance(arg, list) or not arg:
            raise ConfigError("version_policy.specific must be a non-empty list of versions")
        for v in arg:
            _number("version_policy.specific[]", v, minimum=1, integer=True)
    else:
        raise ConfigError(f"version_policy: unknown policy {kind!r}; {expected}")
    return {kind: arg}


def _warmup(value: Any) -> bool | list[dict[str, Any]]:
    if isinstance(value, bool):
        return value
    shape = 'true, false or a list of samples like [{"x": {"shape": [1, 4], "data": [...]}}]'
    if not isinstance(value, list) or not value:
        raise ConfigError(f"warmup must be {shape}, got {json.dumps(value)}")
    for i, sample in enumerate(value):
        if not isinstance(sample, dict) or not sample:
            raise ConfigError(f"warmup[{i}] must map input names to tensors; {shape}")
        for name, tensor in sample.items():
            if not isinstance(tensor, dict) or "data" not in tensor or "shape" not in tensor:
                raise ConfigError(
                    f"warmup[{i}].{name} must be an object with 'shape' and 'data'; {shape}"
                )
    return value


def _io_list(key: str, value: Any, kind: str) -> list[dict[str, Any]]:
    """`input`/`output`: [{"name", "data_type": "TYPE_FP32", "dims": [...]}], Triton's shape."""
    example = '[{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]'
    if not isinstance(value, list):
        raise ConfigError(f"{key} must be a list like {example}, got {json.dumps(value)}")
    seen = set()
    out = []
    for i, item in enumerate(value):
        what = f"{key}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ConfigError(f"{what} must be an object with a 'name'; e.g. {example}")
        what = f"{key} '{item['name']}'"
        allowed = _IO_KEYS - (
            {"optional", "padding_value"} if key == "output" else {"label_filename"}
        )
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ConfigError(
                f"{what}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
            )
        if item["name"] in seen:
            raise ConfigError(f"{what} is declared twice")
        seen.add(item["name"])
        data_type, dims = item.get("data_type"), item.get("dims")
        if kind != ONNX or data_type is not None or dims is not None:
            if data_type not in TRITON_TO_V2:
                raise ConfigError(
                    f"{what}: data_type must be one of "
                    f"{', '.join(TRITON_TO_V2)}, got {json.dumps(data_type)}"
                )
            if not isinstance(dims, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in dims
            ):
                raise ConfigError(
                    f"{what}: dims must be a list of sizes (-1: variable), got {json.dumps(dims)}"
                )
        padding = item.get("padding_value", 0)
        if isinstance(padding, (list, dict)) or padding is None:
            raise ConfigError(
                f"{what}: padding_value must be a number, a boolean or a string (the value "
                f"padded positions get), got {json.dumps(padding)}"
            )
        label = item.get("label_filename")
        if label is not None and (
            not isinstance(label, str) or not label or "/" in label or label.startswith(".")
        ):
            raise ConfigError(
                f"{what}: label_filename must be a file name in the model "
                f"folder, got {json.dumps(label)}"
            )
        out.append(dict(item))
    return out


def _ensemble_scheduling(value: Any) -> dict[str, Any]:
    """`{"step": [{"model_name", "model_version", "input_map", "output_map"}, ...]}`."""
    if not isinstance(value, dict) or set(value) - {"step"}:
        raise ConfigError(
            'ensemble_scheduling must be {"step": [...]}, '
            f"got keys {sorted(value) if isinstance(value, dict) else value}"
        )
    steps = value.get("step")
    if not isinstance(steps, list) or not steps:
        raise ConfigError("ensemble_scheduling.step must be a non-empty list of steps")
    for i, step in enumerate(steps):
        what = f"ensemble_scheduling.step[{i}]"
        if not isinstance(step, dict):
            raise ConfigError(f"{what} must be an object")
        unknown = sorted(set(step) - _STEP_KEYS)
        if unknown:
            raise ConfigError(
                f"{what}: unknown key(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(_STEP_KEYS))}"
            )
        if not isinstance(step.get("model_name"), str) or not step["model_name"]:
            raise ConfigError(f"{what}: model_name must name a model of the repository")
        version = step.setdefault("model_version", -1)
        if isinstance(version, str) and version.lstrip("-").isdigit():
            version = step["model_version"] = int(version)  # proto JSON writes int64 as text
        if isinstance(version, bool) or not isinstance(version, int) or version < -1 or not version:
            raise ConfigError(
                f"{what}: model_version must be -1 (latest) or a version number, "
                f"got {json.dumps(version)}"
            )
        for key in ("input_map", "output_map"):
            mapping = step.get(key)
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
            ):
                raise ConfigError(
                    f"{what}: {key} must map the step model's tensor names to "
                    f"ensemble tensor names, got {json.dumps(mapping)}"
                )
    return value


def _instance_group(value: Any) -> int:
    """Triton's instance_group: the total count of CPU instances (GPU kinds are ONNX's device)."""
    example = '[{"count": 2, "kind": "KIND_CPU"}]'
    if not isinstance(value, list) or not value:
        raise ConfigError(f"instance_group must be a list like {example}")
    total = 0
    for i, group in enumerate(value):
        if not isinstance(group, dict) or set(group) - {"count", "kind", "name"}:
            raise ConfigError(f"instance_group[{i}] must be like {example}")
        if group.get("kind", "KIND_CPU") not in ("KIND_CPU", "KIND_AUTO"):
            raise ConfigError(
                f"instance_group[{i}].kind: only KIND_CPU and KIND_AUTO; the "
                "device of an ONNX model is its 'device' key"
            )
        total += _number(
            f"instance_group[{i}].count", group.get("count", 1), minimum=1, integer=True
        )
    return total


def _check_kind(config: ModelConfig) -> None:
    """Triton's rules tying platform, backend and the Triton fields together."""
    if config.platform is not None and config.platform not in _PLATFORMS:
        raise ConfigError(
            f"platform must be one of {', '.join(_PLATFORMS)}, got {json.dumps(config.platform)}"
        )
    if config.backend is not None and config.backend not in _BACKENDS:
        raise ConfigError(
            f"backend must be one of {', '.join(_BACKENDS)}, got {json.dumps(config.backend)}"
        )
    if config.backend == "python" and config.platform is not None:
        raise ConfigError('a model with "backend": "python" must not set "platform"')
    if config.platform == "ensemble" and config.backend is not None:
        raise ConfigError('an ensemble ("platform": "ensemble") must not set "backend"')
    kind = config.kind
    if (config.ensemble_scheduling is None) != (kind != ENSEMBLE):
        raise ConfigError(
            'ensemble_scheduling is allowed, and needed, only with "platform": "ensemble"'
        )
    if kind != ONNX:
        for key in ("input", "output"):
            if not getattr(config, key):
                raise ConfigError(
                    f'a {kind} model must declare its "{key}" tensors (name, data_type, dims)'
                )


def parse_config(raw: Any) -> ModelConfig:
    """Validate a decoded config.json object; unknown keys are errors (typos must not pass)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config.json must hold a JSON object, got {type(raw).__name__}")
    known = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}"
        )
    config = ModelConfig()
    for key, value in raw.items():
        if key in ("max_batch_size", "max_queue_size"):
            value = _number(key, value, minimum=0 if key == "max_batch_size" else 1, integer=True)
        elif key in ("max_queue_delay_ms", "default_timeout_ms"):
            value = float(_number(key, value, minimum=0, integer=False))
        elif key == "instance_count":
            value = _number(key, value, minimum=1, integer=True)
        elif key == "intra_op_threads":
            value = None if value is None else _number(key, value, minimum=1, integer=True)
        elif key == "version_policy":
            value = _version_policy(value)
        elif key == "device":
            if value is not None:
                try:
                    value = parse_device(str(value)) if isinstance(value, str) else None
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None
                if value is None:
                    raise ConfigError(f"device must be a string, got {json.dumps(raw[key])}")
        elif key == "warmup":
            value = _warmup(value)
        elif key == "cuda":
            value = _provider_options(key, value, CUDA_OPTIONS)
        elif key == "tensorrt":
            if value is True:
                value = {}
            elif value is False or value is None:
                value = None
            else:
                value = _provider_options(key, value, TENSORRT_OPTIONS)
        elif key in ("name", "platform", "backend"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{key} must be a non-empty string, got {json.dumps(value)}")
        elif key == "ensemble_scheduling":
            value = _ensemble_scheduling(value)
        elif key == "dynamic_batching":
            if not isinstance(value, dict) or set(value) - set(_DYNAMIC_BATCHING_KEYS):
                raise ConfigError(
                    'dynamic_batching must be {} or an object like {"max_queue_delay_microseconds"'
                    ': 100, "pad_variable_length_inputs": true} (keys: '
                    f"{', '.join(_DYNAMIC_BATCHING_KEYS)}), got {json.dumps(value)}"
                )
            if "pad_variable_length_inputs" in value:
                pad = value["pad_variable_length_inputs"]
                if not isinstance(pad, bool):
                    raise ConfigError(
                        "dynamic_batching.pad_variable_length_inputs must be true or false, "
                        f"got {json.dumps(pad)}"
                    )
                config.pad_variable_length_inputs = pad
            if "padding_buckets" in value:
                config.padding_buckets = _buckets(
                    "dynamic_batching.padding_buckets", value["padding_buckets"]
                )
            if "max_queue_delay_microseconds" in value:
                delay = _number(
                    "dynamic_batching.max_queue_delay_microseconds",
                    value["max_queue_delay_microseconds"],
                    minimum=0,
                    integer=True,
                )
                config.max_queue_delay_ms = delay / 1000.0
        elif key == "instance_group":
            config.instance_count = _instance_group(value)
        elif key == "padding_buckets":
            value = _buckets(key, value)
        elif key in (
            "require_batching",
            "share_weights",
            "pad_variable_length_inputs",
        ) and not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {json.dumps(value)}")
        setattr(config, key, value)
    if config.padding_buckets and not config.pad_variable_length_inputs:
        raise ConfigError(
            "padding_buckets takes effect only with padding: set pad_variable_length_inputs "
            "to true, or remove padding_buckets"
        )
    _check_gpu_agrees(config)
    _check_kind(config)
    if config.kind != ONNX and "max_batch_size" not in raw:
        config.max_batch_size = 0  # Triton's default: a Triton config means what it meant there
    for key in ("input", "output"):
        if key in raw:
            setattr(config, key, _io_list(key, raw[key], config.kind))
    return config


def _buckets(key: str, value: Any) -> tuple[int, ...]:
    """Length bucket bounds: positive integers in ascending order."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
        or any(a >= b for a, b in zip(value, value[1:], strict=False))
    ):
        raise ConfigError(
            f"{key} must be a list of ascending positive lengths, e.g. [16, 32, 64, 128] (a "
            f"request batches with those of its bucket), got {json.dumps(value)}"
        )
    return tuple(value)


def _check_gpu_agrees(config: ModelConfig) -> None:
    """`device: cuda:N` and a provider's `device_id` name one GPU, or the config is refused."""
    named = {}
    if config.device and ":" in config.device:
        named["device"] = int(config.device.split(":")[1])
    for key, options in (("cuda", config.cuda), ("tensorrt", config.tensorrt or {})):
        if "device_id" in options:
            named[f"{key}.device_id"] = options["device_id"]
    if len(set(named.values())) > 1:
        said = ", ".join(f"{k} {v}" for k, v in named.items())
        raise ConfigError(f"these name different GPUs: {said}; set the GPU in one place")


def load_config(model_dir: Path) -> ModelConfig:
    """The model's config.json (defaults when absent); raises ConfigError when invalid."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.exists():
        return ModelConfig()
    config = _read_config(path)
    if config.name is not None and config.name != Path(model_dir).name:
        raise ConfigError(
            f"name {config.name!r} does not match the model folder {Path(model_dir).name!r}"
        )
    return config


def _read_config(path: Path) -> ModelConfig:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {CONFIG_FILE}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    return parse_config(raw)
