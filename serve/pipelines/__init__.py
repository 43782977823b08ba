"""Server-side pipelines: Python models (Triton's Python backend), ensembles of served models
and the classification extension. See docs/pipelines.md."""
