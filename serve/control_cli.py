"""`tapeserve serve` options for model control, the admin plane and model vetting.

Kept here, applied to the command with one decorator, so the serve command stays readable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from serve.settings import CONTROL_MODES, default


def _token_file(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    """The path as given ("" when unset); an empty token file fails here, before Gunicorn."""
    if value and not Path(value).read_text(encoding="utf-8").strip():
        raise click.BadParameter(f"token file {value!r} is empty")
    return value or ""


_OPTIONS = [
    click.option(
        "--model-control-mode",
        type=click.Choice(CONTROL_MODES),
        default=default("model_control_mode"),
        show_default=True,
        envvar="TAPESERVE_MODEL_CONTROL_MODE",
        help="none: load at start; poll: rescan the repository every --poll-interval seconds; "
        "explicit: load/unload only through the admin API (needs an admin token).",
    ),
    click.option(
        "--poll-interval",
        type=click.FloatRange(min=0, min_open=True),
        default=default("poll_interval"),
        show_default=True,
        envvar="TAPESERVE_POLL_INTERVAL",
        help="Seconds between repository scans (poll) or admin-request checks (explicit).",
    ),
    click.option(
        "--admin-token-file",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        callback=_token_file,
        envvar="TAPESERVE_ADMIN_TOKEN_FILE",
        help="File holding the admin bearer token (or set TAPESERVE_ADMIN_TOKEN); without a "
        "token the admin plane (load, unload, upload) is disabled.",
    ),
    click.option(
        "--inference-token-file",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        callback=_token_file,
        envvar="TAPESERVE_INFERENCE_TOKEN_FILE",
        help="File holding a bearer token required by the inference endpoints (or set "
        "TAPESERVE_INFERENCE_TOKEN).",
    ),
    click.option(
        "--allowed-custom-op-domains",
        default=default("allowed_custom_op_domains"),
        envvar="TAPESERVE_ALLOWED_CUSTOM_OP_DOMAINS",
        help="Comma-separated operator domains beyond ONNX's and com.microsoft that models may "
        "use [default: none].",
    ),
    click.option(
        "--load-probe/--no-load-probe",
        default=default("load_probe"),
        show_default=True,
        envvar="TAPESERVE_LOAD_PROBE",
        help="Load each new model version in a memory-limited child process first.",
    ),
    click.option(
        "--load-probe-memory-mb",
        type=click.IntRange(min=64),
        default=default("load_probe_memory_mb"),
        show_default=True,
        envvar="TAPESERVE_LOAD_PROBE_MEMORY_MB",
        help="Address-space limit of the load probe; a model needing more is refused.",
    ),
    click.option(
        "--load-probe-timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=default("load_probe_timeout"),
        show_default=True,
        envvar="TAPESERVE_LOAD_PROBE_TIMEOUT",
        help="Seconds the load probe may take (session creation and warm-up).",
    ),
    click.option(
        "--allow-python-models/--no-allow-python-models",
        default=default("allow_python_models"),
        show_default=True,
        envvar="TAPESERVE_ALLOW_PYTHON_MODELS",
        help='Serve Python models (config.json "backend": "python"): their model.py runs '
        "with this server's user, files and network (docs/pipelines.md#what-it-trusts).",
    ),
    click.option(
        "--python-model-memory-mb",
        type=click.IntRange(min=64),
        default=default("python_model_memory_mb"),
        show_default=True,
        envvar="TAPESERVE_PYTHON_MODEL_MEMORY_MB",
        help="Address-space limit of each Python model's process.",
    ),
]


def control_options(command: Callable) -> Callable:
    """Apply every model-control option to a click command."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command
