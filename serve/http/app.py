"""The Flask app of the HTTP front door: every endpoint, thin views over the inference core.

The gthread worker serves it as is; the async worker serves it behind the event-loop fast path
(serve/http/fast_path.py), which answers the inference routes itself.
"""

from __future__ import annotations

from flask import Flask

from serve.core.admin import AdminPlane
from serve.core.inference import InferenceCore
from serve.http import admin as admin_views
from serve.http import name_guard
from serve.http.views import inference, status, tfserving, v2
from serve.http.views.common import register_error_handlers
from serve.observability import accesslog


def create_flask_app(core: InferenceCore, admin: AdminPlane) -> Flask:
    """The Flask app over `core` and the admin plane `admin`."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = core.max_body_size
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["tapeserve"] = core
    for blueprint in (v2.bp, tfserving.bp, inference.bp, status.bp):
        app.register_blueprint(blueprint)
    register_error_handlers(app)
    accesslog.init_app(app, core.settings.log_level)  # JSON access log lines, X-Request-ID
    name_guard.init_app(app)  # every model URL, before routing
    admin_views.init_app(app, admin)
    return app
