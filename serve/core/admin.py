"""The admin plane: model load, unload and upload behind the admin token, for every front door.

The REST endpoints (serve/http/admin.py) and gRPC's RepositoryModelLoad/Unload hand it the
credential they received and Triton's load parameters; refusals go through the core's one
error table. What it guarantees:

- No token configured: every admin call is refused (403, PERMISSION_DENIED), saying how to
  enable it; a missing or wrong token is 401 / 403, compared in constant time.
- Names and versions are validated before anything touches the file system.
- Files are written into a hidden staging folder beside the model's versions, vetted there
  (static checks and load probe), then renamed into place: the repository never holds a partial
  or unvetted version, and an existing version is never overwritten (409, ALREADY_EXISTS).
- Python models (code) are accepted only when the server runs with --allow-python-models.
- An ensemble's version folder holds no model file: as Triton, it comes as `file:<v>/<name>`
  parameters of any content (e.g. one empty file); a config alone cannot create one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from serve.core.auth import ADMIN_TOKEN_ENV, check_bearer
from serve.core.errors import Code, ServeError
from serve.lifecycle.config import CONFIG_FILE, ENSEMBLE, PYTHON, parse_config
from serve.lifecycle.control import ModelController, vet_model
from serve.lifecycle.names import InvalidName, validate_model_name, validate_version
from serve.lifecycle.registry import Model, State
from serve.lifecycle.repository import MODEL_FILE, MODEL_FILES, available_versions
from serve.protocol.types import ProtocolError

log = logging.getLogger("tapeserve.admin")

PYTHON_MODEL_FILE = MODEL_FILES[PYTHON]
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

#: What a load request carries: files by version and name, and config.json (None: keep it).
LoadFiles = dict[int, dict[str, bytes]]


class AdminPlane:
    """This worker's admin plane over its model controller (`token` None: disabled)."""

    def __init__(self, controller: ModelController, token: str | None) -> None:
        self.controller = controller
        self.token = token
        if controller.settings.mode == "explicit" and token is None:
            log.warning(
                "model control mode is explicit but no admin token is set: models loaded at "
                "start stay as they are until restart"
            )

    def authorize(self, credential: str | None, name: str, version: str | None = None) -> None:
        """The token first, then the name and version (400)."""
        if self.token is None:
            raise ServeError(
                Code.PERMISSION_DENIED,
                "the admin plane is disabled: start tapeserve with --admin-token-file FILE "
                f"or {ADMIN_TOKEN_ENV} to enable model load, unload and upload",
            )
        check_bearer(credential, self.token, "admin API")
        validate_model_name(name)
        if version is not None:
            validate_version(version)

    # -- the actions ---------------------------------------------------------------------------

    def load(self, name: str, files: LoadFiles, config: dict | None) -> Model:
        """Load (or reload) a model in every worker; `files` and `config` are vetted and
        written first. Raises ServeError (400) naming each version that failed to load."""
        self._require_mode("explicit")
        self._refuse_python_models(name, files, config)
        self._require_ensemble_version(name, files, config)
        if config is not None:
            self._write_config(name, config)
        for version, version_files in sorted(files.items()):
            self._publish_version(name, version, version_files)
        return self._loaded(name, self.controller.load(name))

    def unload(self, name: str) -> None:
        """Unload a model in every worker; queued requests finish first."""
        self._require_mode("explicit")
        self.controller.unload(name)

    def upload(self, name: str, version: str, model_file: bytes) -> Model | None:
        """Write a new version of an ONNX model, vetted before it enters the repository; the
        loaded model in explicit mode, None in poll mode (the next scans load it)."""
        self._require_mode("poll", "explicit")
        if not model_file:
            raise ProtocolError(400, "the upload body is empty; send the ONNX file")
        self._publish_version(name, validate_version(version), {MODEL_FILE: model_file})
        if self.controller.settings.mode == "explicit":
            return self._loaded(name, self.controller.load(name))
        return None

    # -- the checks ----------------------------------------------------------------------------

    def _require_mode(self, *modes: str) -> None:
        mode = self.controller.settings.mode
        if mode not in modes:
            raise ProtocolError(
                400,
                f"model control mode is {mode!r}: this request needs --model-control-mode "
                f"{' or '.join(modes)}",
            )

    def _refuse_python_models(self, name: str, files: LoadFiles, config: dict | None) -> None:
        """A Python model through the admin plane is code sent to the server to run: refused
        (403) unless the server was started with --allow-python-models."""
        if self.controller.registry.allow_python_models:
            return
        sends_code = any(PYTHON_MODEL_FILE in f for f in files.values())
        if sends_code or (config is not None and parse_config(config).kind == PYTHON):
            raise ProtocolError(
                403,
                f"model {name!r} is a Python model: its model.py would run as code in this "
                "server, which accepts Python models only when started with "
                "--allow-python-models",
            )

    def _require_ensemble_version(self, name: str, files: LoadFiles, config: dict | None) -> None:
        """An ensemble needs a version folder (empty is fine), as in Triton: a config alone for
        one the repository does not have is refused (400) before anything is written."""
        if files or config is None or parse_config(config).kind != ENSEMBLE:
            return
        model_dir = self.controller.registry.repository / name
        if model_dir.is_dir() and available_versions(model_dir, ENSEMBLE):
            return
        raise ProtocolError(
            400,
            f"model {name!r} is an ensemble and the repository has no version folder for it: "
            "send one with the config, as Triton takes it, as a parameter 'file:1/<name>' of "
            "any content (an ensemble's version folder holds no model file; an empty "
            f"'file:1/ensemble' will do), or create {name}/1/ in the model repository",
        )

    @staticmethod
    def _loaded(name: str, model: Model) -> Model:
        """The model as loaded; 400 naming each version that failed (others keep serving)."""
        failed = [mv for mv in model.versions.values() if mv.state is State.UNAVAILABLE]
        if model.error or failed:
            serving = [str(mv.version) for mv in model.versions.values() if mv.state is State.READY]
            problems = [model.error] if model.error else []
            problems += [f"version {mv.version}: {mv.reason}" for mv in failed]
            still = f"; version(s) {', '.join(serving)} keep serving" if serving else ""
            raise ServeError(
                Code.INVALID_ARGUMENT,
                f"failed to load model {name!r}: {'; '.join(problems)}{still}",
            )
        return model

    # -- the file system -----------------------------------------------------------------------

    def _publish_version(self, name: str, version: int, files: dict[str, bytes]) -> None:
        """Stage, vet, then rename into `<repo>/<name>/<version>`; never overwrite a version."""
        model_dir = self.controller.registry.repository / name
        target = model_dir / str(version)
        exists = ProtocolError(
            409, f"version {version} of model {name!r} already exists; upload a new version"
        )
        if target.exists():
            raise exists
        model_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=model_dir))
        try:
            for file_name, data in files.items():
                with open(staging / file_name, "xb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
            if MODEL_FILE in files:  # a Python model's code is not vetted: trusted or refused
                vet_model(staging / MODEL_FILE, self.controller.settings)
            os.chmod(staging, 0o755)
            try:
                os.rename(staging, target)  # atomic; fails if the version appeared meanwhile
            except OSError:
                raise exists from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write_config(self, name: str, config: dict) -> None:
        model_dir = self.controller.registry.repository / name
        model_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".config-", dir=model_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(config, out, indent=2)
        os.replace(tmp, model_dir / CONFIG_FILE)


def load_parameters(config: str | None, files: dict[str, bytes]) -> tuple[LoadFiles, dict | None]:
    """Triton's load parameters, as every protocol carries them: `config` (config.json as text)
    and `file:<version>/<name>` (the file's bytes). Checked: the config is valid, file names are
    plain, each version has its model file (an ensemble's versions have none: any files)."""
    parsed, kind = None, None
    if config is not None:
        try:
            parsed = json.loads(config)
        except ValueError as exc:
            raise ProtocolError(400, f"parameter 'config' is not valid JSON: {exc}") from None
        kind = parse_config(parsed).kind  # raises ConfigError (400) naming the bad key
    by_version: LoadFiles = {}
    for key, data in files.items():
        version, file_name = _file_key(key)
        by_version.setdefault(version, {})[file_name] = data
    for version, version_files in by_version.items():
        if kind == ENSEMBLE:
            continue  # its version folder only marks the version, as in Triton
        if MODEL_FILE not in version_files and PYTHON_MODEL_FILE not in version_files:
            raise ProtocolError(
                400,
                f"files for version {version} must include {MODEL_FILE} (or a Python "
                f"model's {PYTHON_MODEL_FILE})",
            )
    return by_version, parsed


def _file_key(key: str) -> tuple[int, str]:
    """`file:3/model.onnx` -> (3, "model.onnx"); only flat, plain file names in a version."""
    rel = key[len("file:") :]
    parts = rel.split("/")
    if len(parts) != 2 or not _FILE_NAME.fullmatch(parts[1]) or ".." in parts[1]:
        raise ProtocolError(
            400,
            f"parameter {key!r}: files are named 'file:<version>/<file name>' with a plain file "
            "name (letters, digits, '_', '.', '-'; no folders, no '..')",
        )
    try:
        return validate_version(parts[0]), parts[1]
    except InvalidName as exc:
        raise ProtocolError(400, f"parameter {key!r}: {exc}") from None
