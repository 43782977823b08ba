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

    def to_json(self) -> dict[str, Any]:
        """The config as `/v2/models/{m}/config` shows it."""
        return asdict(self)


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
        setattr(config, key, value)
    return config


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
