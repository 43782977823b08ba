"""The model repository layout: `<repo>/<model>/config.json`, `<repo>/<model>/<v>/model.onnx`.

Scanning is pure file-system work; loading sessions is the registry's job
(serve.lifecycle.registry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from serve.lifecycle.config import ConfigError, ModelConfig, load_config

MODEL_FILE = "model.onnx"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class ModelEntry:
    """One model folder: its config (or why it is invalid) and the versions its policy selects."""

    name: str
    path: Path
    config: ModelConfig
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None


def available_versions(model_dir: Path) -> dict[int, Path]:
    """Positive-integer version folders holding a model.onnx; other folders are ignored."""
    versions = {}
    for child in model_dir.iterdir():
        is_version = child.name.isdigit() and int(child.name) > 0
        if is_version and (child / MODEL_FILE).is_file():
            versions[int(child.name)] = child / MODEL_FILE
    return versions


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
    """Every model folder under `root`, sorted by name; FileNotFoundError if root is absent."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {str(root)!r} is not a directory")
    entries = []
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if model_dir.name.startswith(".") or not _MODEL_NAME.match(model_dir.name):
            continue
        entry = ModelEntry(model_dir.name, model_dir, ModelConfig())
        try:
            entry.config = load_config(model_dir)
            available = available_versions(model_dir)
            if not available:
                expected = f"{model_dir.name}/1/{MODEL_FILE}"
                raise ConfigError(f"no version folder with a {MODEL_FILE} (expected {expected})")
            entry.versions = select_versions(available, entry.config.version_policy)
        except ConfigError as exc:
            entry.error = str(exc)
        entries.append(entry)
    return entries
