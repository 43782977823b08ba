"""The Gunicorn configuration at its documented path, `-c python:serve.gunicorn_conf`.

It lives with the worker processes it configures: serve/workers/gunicorn_conf.py.
"""

from serve.workers.gunicorn_conf import *  # noqa: F403
