"""What Gunicorn loads in each worker: `serve.app:create_app()`.

Everything happens in the worker, after the fork: the model registry starts loading in a
background thread (liveness answers while models load), the inference core is built over it,
and the front doors over the core.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from flask import Flask

from serve.core.admin import AdminPlane
from serve.core.auth import ADMIN_TOKEN_ENV, INFERENCE_TOKEN_ENV, read_token
from serve.core.inference import InferenceCore
from serve.http.app import create_flask_app
from serve.http.fast_path import TapeserveASGI
from serve.lifecycle.control import RUNTIME_DIR_ENV, ControlSettings, ModelController
from serve.lifecycle.registry import ModelRegistry
from serve.settings import Settings

if TYPE_CHECKING:
    from serve.grpc.server import GrpcServer


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("tapeserve")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
        )
        logger.addHandler(handler)
        logger.propagate = False


class WorkerApp:
    """One worker's server: its inference core and the front doors over it.

    A WSGI callable (the Flask app: what the gthread worker serves); the async worker serves
    `asgi()`, which answers inference on its event loop. Both worker classes run
    `grpc_server()` beside it.
    """

    def __init__(self, core: InferenceCore, flask_app: Flask, admin: AdminPlane) -> None:
        self.core = core
        self.flask_app = flask_app
        self.admin = admin

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        return self.flask_app(environ, start_response)

    def asgi(self, threads: int = 8) -> TapeserveASGI:
        """The ASGI app of the async worker (`threads` run the Flask endpoints)."""
        return TapeserveASGI(self.core, self.flask_app, threads)

    def grpc_server(self) -> GrpcServer | None:
        """This worker's gRPC server (not started), or None when --grpc-port is 0.

        gRPC is imported here, in the worker: the Gunicorn master must fork before any gRPC
        object exists."""
        settings = self.core.settings
        if not settings.grpc_port:
            return None
        from serve.grpc.server import GrpcServer

        return GrpcServer(
            self.core, self.admin, settings.host, settings.grpc_port, settings.threads
        )


def create_app(settings: Settings | None = None) -> WorkerApp:
    """Build this worker's server for `settings` (default: TAPESERVE_* env vars) and start
    loading models."""
    settings = settings or Settings.from_env()
    _configure_logging(settings.log_level)
    registry = ModelRegistry(
        settings.model_repository,
        settings.device,
        settings.workers,
        runtime_dir=os.environ.get(RUNTIME_DIR_ENV) or None,
    )
    registry.allow_python_models = settings.allow_python_models
    registry.python_model_memory_bytes = settings.python_model_memory_mb * 1024**2
    controller = ModelController(registry, ControlSettings.from_settings(settings))
    registry.vet = controller.vet  # static checks and the load probe before any session
    core = InferenceCore(
        registry,
        settings,
        read_token(settings.inference_token_file or None, INFERENCE_TOKEN_ENV),
    )
    registry.in_process = core  # ensembles and Python models call other models through it
    admin = AdminPlane(controller, read_token(settings.admin_token_file or None, ADMIN_TOKEN_ENV))
    flask_app = create_flask_app(core, admin)
    controller.start()
    logging.getLogger("tapeserve").info(
        "loading models from %s (device %s)", settings.model_repository, settings.device
    )
    registry.start()
    return WorkerApp(core, flask_app, admin)
