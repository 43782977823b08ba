"""The Flask application factory Gunicorn runs in each worker: `serve.app:create_app()`.

Everything happens in the worker, after the fork: the model registry starts loading in a
background thread, so liveness answers while models load.
"""

from __future__ import annotations

import logging
import os
import sys

from flask import Flask

from serve.http import admin
from serve.http.views import status, tfserving, v2
from serve.http.views.common import Server, register_error_handlers
from serve.lifecycle.control import RUNTIME_DIR_ENV
from serve.lifecycle.registry import ModelRegistry
from serve.observability import accesslog
from serve.settings import Settings


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


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app for `settings` (default: TAPESERVE_* env vars) and start loading models."""
    settings = settings or Settings.from_env()
    _configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_size
    app.json.sort_keys = False  # type: ignore[attr-defined]
    registry = ModelRegistry(
        settings.model_repository,
        settings.device,
        settings.workers,
        runtime_dir=os.environ.get(RUNTIME_DIR_ENV) or None,
    )
    registry.allow_python_models = settings.allow_python_models
    registry.python_model_memory_bytes = settings.python_model_memory_mb * 1024**2
    app.extensions["tapeserve"] = Server(settings, registry)
    for blueprint in (v2.bp, tfserving.bp, status.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    accesslog.init_app(app, settings.log_level)  # JSON access log lines, X-Request-ID
    admin.init_model_control(app, settings, registry)  # vetting, name guard, admin plane, modes
    logging.getLogger("tapeserve").info(
        "loading models from %s (device %s)", settings.model_repository, settings.device
    )
    registry.start()
    return app
