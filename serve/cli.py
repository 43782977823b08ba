"""The `tapeserve` command. `tapeserve serve` execs a real Gunicorn on serve.app:create_app().

The other subcommands (train, export, bench) are imported only when they run: starting a server
loads neither the engine nor the exporter stack.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click

from serve.control_cli import control_options
from serve.settings import (
    DEVICES_HELP,
    WORKER_CLASSES,
    Settings,
    default,
    default_model_repository,
)

GUNICORN_APP = "serve.app:create_app()"
GUNICORN_CONFIG = "python:serve.gunicorn_conf"


def gunicorn_argv() -> list[str]:
    """The Gunicorn command line that `serve` runs (settings travel in TAPESERVE_* variables)."""
    return [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG, GUNICORN_APP]


class LazyGroup(click.Group):
    """A click group whose `lazy` subcommands ("module:attribute") are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy={
        "train": "engine.cli:train",
        "export": "exporters.cli:export",
        "bench": "loadgen.cli:bench_command",
    },
    context_settings={"help_option_names": ["-h", "--help"]},
)
def main() -> None:
    """tapeserve: train, export and serve ONNX models."""


@main.command()
@click.option(
    "--model-repository",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="TAPESERVE_MODEL_REPOSITORY",
    help="Model repository folder [default: ./models if present, else the bundled examples].",
)
@click.option("--host", default=default("host"), show_default=True, envvar="TAPESERVE_HOST")
@click.option(
    "--port", default=default("port"), show_default=True, type=int, envvar="TAPESERVE_PORT"
)
@click.option(
    "--grpc-port",
    default=default("grpc_port"),
    show_default=True,
    type=click.IntRange(min=0),
    envvar="TAPESERVE_GRPC_PORT",
    help="Port of the gRPC inference service (KServe V2 / Triton), served by every worker; "
    "0 turns gRPC off.",
)
@click.option(
    "--workers",
    default=default("workers"),
    show_default=True,
    type=click.IntRange(min=0),
    envvar="TAPESERVE_WORKERS",
    help="Gunicorn worker processes (each loads every model); 0: one per GPU on a GPU (each "
    "worker then uses its own GPU), else two, which use both cores of a 2-core CPU past the GIL "
    "(docs/performance.md).",
)
@click.option(
    "--worker-class",
    default=default("worker_class"),
    show_default=True,
    type=click.Choice(list(WORKER_CLASSES)),
    envvar="TAPESERVE_WORKER_CLASS",
    help="async: one event loop per worker (uvicorn), inference on the loop, the other "
    "endpoints in --threads threads; gthread: Gunicorn's thread per request (docs/serving.md).",
)
@click.option(
    "--threads",
    default=default("threads"),
    show_default=True,
    type=click.IntRange(min=1),
    envvar="TAPESERVE_THREADS",
    help="Request threads per worker (gthread: concurrent requests are what batches form from; "
    "async: threads that run the non-inference endpoints).",
)
@click.option(
    "--device",
    default=default("device"),
    show_default=True,
    envvar="TAPESERVE_DEVICE",
    help=f"{DEVICES_HELP}: auto uses CUDA only when its provider is really active.",
)
@click.option(
    "--strict-readiness/--no-strict-readiness",
    default=default("strict_readiness"),
    show_default=True,
    envvar="TAPESERVE_STRICT_READINESS",
    help="Keep /v2/health/ready at 503 while any model failed to load.",
)
@click.option(
    "--max-body-size",
    default=default("max_body_size"),
    show_default=True,
    type=click.IntRange(min=1),
    envvar="TAPESERVE_MAX_BODY_SIZE",
    help="Largest request body in bytes, after decompression (413 beyond).",
)
@click.option(
    "--timeout",
    default=default("timeout"),
    show_default=True,
    type=click.IntRange(min=1),
    envvar="TAPESERVE_TIMEOUT",
    help="Gunicorn worker timeout in seconds.",
)
@click.option(
    "--graceful-timeout",
    default=default("graceful_timeout"),
    show_default=True,
    type=click.IntRange(min=1),
    envvar="TAPESERVE_GRACEFUL_TIMEOUT",
    help="Seconds a SIGTERM drain may take (in-flight and queued requests finish) before "
    "workers are killed.",
)
@click.option(
    "--log-level",
    default=default("log_level"),
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    envvar="TAPESERVE_LOG_LEVEL",
)
@click.option(
    "--control-socket",
    default=default("control_socket"),
    envvar="TAPESERVE_CONTROL_SOCKET",
    help="Gunicorn control socket path [default: disabled, so servers run side by side].",
)
@control_options
def serve(model_repository: Path | None, **options: object) -> None:
    """Serve a model repository over HTTP (KServe V2 and TF Serving REST) and gRPC (KServe V2)
    with Gunicorn."""
    repository = model_repository or default_model_repository()
    if not repository.is_dir():
        raise click.BadParameter(
            f"{str(repository)!r} is not a directory", param_hint="--model-repository"
        )
    try:
        settings = Settings(model_repository=str(repository.resolve()), **options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    os.environ.update(settings.to_env())
    argv = gunicorn_argv()
    click.echo(
        f"tapeserve: serving {settings.model_repository} with {' '.join(argv[2:])}", err=True
    )
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
