"""Atomic writes into a Triton-style model repository (DIR/NAME/config.json, DIR/NAME/<v>/).

A server polling the repository must never see half a file or half a version: every file is
written under a temporary name in its own folder, fsynced, then renamed over the target; a new
version folder is assembled under a hidden temporary name (not a positive integer, so servers
ignore it) and renamed into place in one step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from serve.lifecycle.names import validate_model_name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        _write_synced(Path(tmp), data)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> Path:
    return atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


def versions(model_dir: str | os.PathLike[str]) -> list[int]:
    """The model's version numbers: folder names that are positive integers, ascending."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    found = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(v for v in found if v > 0)


def next_version(model_dir: str | os.PathLike[str]) -> int:
    return max(versions(model_dir), default=0) + 1


def publish_version(
    repository: str | os.PathLike[str],
    name: str,
    files: Mapping[str, bytes],
    version: int | None = None,
    *,
    overwrite: bool = False,
) -> tuple[int, Path]:
    """Write `files` as DIR/NAME/<version>/ in one rename; returns (version, folder).

    With no version, the next free one is taken (retrying if a concurrent writer took it).
    An existing version is refused unless `overwrite`, which replaces each file atomically.
    """
    validate_model_name(name)  # the server's rule: a name the server would refuse is refused here
    if version is not None and version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    model_dir = Path(repository) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    while True:
        v = next_version(model_dir) if version is None else version
        target = model_dir / str(v)
        if target.exists():
            if version is None:
                continue  # another writer took it since next_version looked
            if not overwrite:
                raise FileExistsError(
                    f"{target} already exists: pass another version or allow overwriting"
                )
            for fname, data in files.items():
                atomic_write(target / fname, data)
            return v, target
        staging = Path(tempfile.mkdtemp(prefix=f".{v}.", suffix=".tmp", dir=model_dir))
        try:
            for fname, data in files.items():
                _write_synced(staging / fname, data)
            os.chmod(staging, 0o755)
            _fsync_dir(staging)
            try:
                os.rename(staging, target)  # fails if the folder appeared meanwhile
            except OSError:
                if version is not None and not overwrite:
                    raise FileExistsError(f"{target} was created by another writer") from None
                continue  # taken meanwhile: the next free version, or overwrite file by file
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _fsync_dir(model_dir)
        return v, target
