"""Thin Flask blueprints over the model registry: V2, TF Serving, status page and metrics."""
