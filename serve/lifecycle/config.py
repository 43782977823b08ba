"""Per-model `config.json`: schema, defaults and validation (see docs/model-config.md).

A bad config never stops the server: `load_config` raises ConfigError with a message naming the
key and what was wrong, and the model becomes UNAVAILABLE with that reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serve.settings import parse_device

CONFIG_FILE = "config.json"


class ConfigError(ValueError):
    """config.json is unreadable or holds an invalid value; the message says which and why."""


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

    def to_json(self) -> dict[str, Any]:
        """The config as `/v2/models/{m}/config` shows it."""
        return asdict(self)


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
        setattr(config, key, value)
    _check_gpu_agrees(config)
    return config


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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {CONFIG_FILE}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{CONFIG_FILE} is not valid JSON: {exc}") from None
    return parse_config(raw)
