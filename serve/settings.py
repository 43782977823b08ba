"""Server settings, shared by the CLI, the Gunicorn config and the app through TAPESERVE_* env vars.

The CLI exports every setting as an environment variable before it execs Gunicorn, so a
hand-started `gunicorn -c python:serve.gunicorn_conf 'serve.app:create_app()'` reads exactly the
same values in the master (bind, workers) and in each worker (repository, device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

ENV_PREFIX = "TAPESERVE_"
DEVICES_HELP = "auto|cpu|cuda|cuda:N"

#: Gunicorn worker class of each `worker_class` setting (serve/workers/async_worker.py,
#: serve/workers/gthread.py).
WORKER_CLASSES = {
    "async": "serve.workers.async_worker.AsyncWorker",
    "gthread": "serve.workers.gthread.DrainingThreadWorker",
}

#: How models change while serving (serve/lifecycle/control.py).
CONTROL_MODES = ("none", "poll", "explicit")

#: Project root of a checkout or editable install: the bundled example repository lives there.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_REPOSITORY = PROJECT_ROOT / "examples" / "models"


def default_model_repository() -> Path:
    """`./models` when it exists (a user's own repository), else the bundled example repository."""
    local = Path.cwd() / "models"
    return local if local.is_dir() else BUNDLED_REPOSITORY


MULTIPROC_DIR_VAR = "PROMETHEUS_MULTIPROC_DIR"


def normalize_multiproc_dir(environ=os.environ) -> str | None:
    """Make PROMETHEUS_MULTIPROC_DIR absolute, or remove it when empty; returns the value.

    prometheus_client switches to multiprocess mode whenever the variable exists and writes its
    `*.db` files to `os.path.join(value, name)`: an empty value means the current directory (a
    checkout, a user's home). A relative value would name different folders in a Gunicorn master
    and in workers started with `--chdir`. Call it before prometheus_client is imported.
    """
    value = environ.get(MULTIPROC_DIR_VAR, "").strip()
    if not value:
        environ.pop(MULTIPROC_DIR_VAR, None)
        return None
    environ[MULTIPROC_DIR_VAR] = os.path.abspath(value)
    return environ[MULTIPROC_DIR_VAR]


def parse_device(value: str) -> str:
    """Normalise a device name; raises ValueError naming the accepted forms."""
    device = value.strip().lower()
    if device in ("auto", "cpu", "cuda"):
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise ValueError(f"device must be one of {DEVICES_HELP}, got {value!r}")


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false), got {value!r}")


@dataclass
class Settings:
    """Every knob of `tapeserve serve`; each field `x` is also read from env var TAPESERVE_X."""

    model_repository: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int = 8001  # 0: no gRPC
    #: 0: chosen at start - one per GPU on a GPU, else two (two beat one ~1.8x on a 2-core CPU,
    #: docs/performance.md); see serve.lifecycle.runtime.default_workers.
    workers: int = 0
    worker_class: str = "async"  # see WORKER_CLASSES
    threads: int = 8
    device: str = "auto"
    strict_readiness: bool = False
    max_body_size: int = 64 * 1024 * 1024
    timeout: int = 120
    graceful_timeout: int = 30
    log_level: str = "info"
    control_socket: str = ""
    model_control_mode: str = "none"
    poll_interval: float = 5.0
    admin_token_file: str = ""
    inference_token_file: str = ""
    allowed_custom_op_domains: str = ""
    load_probe: bool = True
    load_probe_memory_mb: int = 4096
    load_probe_timeout: float = 60.0
    allow_python_models: bool = False
    python_model_memory_mb: int = 4096

    def __post_init__(self) -> None:
        if not self.model_repository:
            self.model_repository = str(default_model_repository())
        self.device = parse_device(self.device)
        if self.worker_class not in WORKER_CLASSES:
            raise ValueError(
                f"worker_class must be one of {', '.join(WORKER_CLASSES)}, "
                f"got {self.worker_class!r}"
            )
        for name in ("port", "grpc_port", "workers", "threads", "max_body_size"):
            if int(getattr(self, name)) < (0 if name in ("port", "grpc_port", "workers") else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.model_control_mode not in CONTROL_MODES:
            raise ValueError(
                "model_control_mode must be none, poll or explicit, "
                f"got {self.model_control_mode!r}"
            )
        for name in (
            "poll_interval", "load_probe_memory_mb", "load_probe_timeout", "python_model_memory_mb"
        ):  # fmt: skip
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from TAPESERVE_* variables; unset ones keep their defaults."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            try:
                if f.type == "int":
                    values[f.name] = int(raw)
                elif f.type == "float":
                    values[f.name] = float(raw)
                elif f.type == "bool":
                    values[f.name] = _parse_bool(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}: {exc}") from None
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The TAPESERVE_* variables that reproduce these settings in another process."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                value = "1" if value else "0"
            env[ENV_PREFIX + f.name.upper()] = str(value)
        return env


def default(name: str) -> object:
    """The default of Settings field `name`: the one source the CLI options take theirs from."""
    return next(f.default for f in fields(Settings) if f.name == name)
