"""The Gunicorn worker processes: configuration, both worker classes, drain and readiness."""
