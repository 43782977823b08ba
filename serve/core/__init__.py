"""The inference core every front door calls: a request from its credential and payload to its
answer (inference.py), the one error table (errors.py), tokens (auth.py), health (health.py),
and what runs a model's requests (executor.py, batcher.py)."""
