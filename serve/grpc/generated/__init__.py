"""Generated from serve/grpc/proto/ by `python -m serve.grpc.generate`; do not edit."""
