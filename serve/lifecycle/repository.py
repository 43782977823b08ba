"""The model repository layout: `<repo>/<model>/config.json`, `<repo>/<model>/<v>/model.onnx`.

Scanning is pure file-system work; loading sessions is the registry's job
(serve.lifecycle.registry).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from serve.lifecycle.config import ENSEMBLE, ONNX, PYTHON, ConfigError, ModelConfig, load_config
from serve.lifecycle.names import InvalidName, validate_model_name

MODEL_FILE = "model.onnx"
#: The file a version folder holds, per model kind; an ensemble's version folder may be empty
#: (its versions are named by a placeholder path inside the folder).
MODEL_FILES = {ONNX: MODEL_FILE, PYTHON: "model.py", ENSEMBLE: None}
_ENSEMBLE_PLACEHOLDER = "ensemble"

log = logging.getLogger("tapeserve.repository")


@dataclass
class ModelEntry:
    """One model folder: its config (or why it is invalid) and the versions its policy selects."""

    name: str
    path: Path
    config: ModelConfig
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None


def available_versions(model_dir: Path, kind: str = ONNX) -> dict[int, Path]:
    """Positive-integer version folders holding the kind's model file (model.onnx, model.py;
    any for an ensemble); other folders are ignored."""
    model_file = MODEL_FILES[kind]
    versions = {}
    for child in model_dir.iterdir():
        is_version = child.name.isdigit() and int(child.name) > 0
        if is_version and model_file is None and child.is_dir():
            versions[int(child.name)] = child / _ENSEMBLE_PLACEHOLDER
        elif is_version and model_file is not None and (child / model_file).is_file():
            versions[int(child.name)] = child / model_file
    return versions


def missing_versions_error(model_dir: Path, kind: str) -> ConfigError:
    """No version folder: what the kind expects to find."""
    model_file = MODEL_FILES[kind]
    if model_file is None:
        return ConfigError(
            f"no version folder (expected {model_dir.name}/1/, empty for an ensemble)"
        )
    expected = f"{model_dir.name}/1/{model_file}"
    return ConfigError(f"no version folder with a {model_file} (expected {expected})")


def select_versions(available: dict[int, Path], policy: dict) -> dict[int, Path]:
    """Apply a version policy: {"latest": N} (default N=1), {"all": true}, {"specific": [...]}.

    Raises ConfigError when a specific version is missing, so the mistake is visible.
    """
    if "all" in policy:
        return dict(sorted(available.items()))
    if "specific" in policy:
        missing = sorted(set(policy["specific"]) - set(available))
        if missing:
            have = ", ".join(map(str, sorted(available))) or "none"
            raise ConfigError(
                f"version_policy.specific names version(s) {', '.join(map(str, missing))} "
                f"that have no {MODEL_FILE} (available: {have})"
            )
        return {v: available[v] for v in sorted(policy["specific"])}
    latest = sorted(available)[-int(policy.get("latest", 1)) :]
    return {v: available[v] for v in latest}


def scan_repository(root: str | Path) -> list[ModelEntry]:
    """Every model folder under `root` whose name is a valid model name, sorted by name;
    FileNotFoundError if root is absent."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {str(root)!r} is not a directory")
    entries = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if model_dir.name.startswith("."):
            continue  # hidden: upload staging, version control
        try:
            validate_model_name(model_dir.name)
        except InvalidName as exc:
            log.warning("folder %s is not served: %s", model_dir, exc)
            continue
        entry = ModelEntry(model_dir.name, model_dir, ModelConfig())
        try:
            entry.config = load_config(model_dir)
            available = available_versions(model_dir, entry.config.kind)
            if not available:
                raise missing_versions_error(model_dir, entry.config.kind)
            entry.versions = select_versions(available, entry.config.version_policy)
        except ConfigError as exc:
            entry.error = str(exc)
        entries.append(entry)
    return entries
