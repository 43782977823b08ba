"""Thin Flask blueprints over the inference core: inference, V2, TF Serving, status and metrics."""
