"""Start a real `tapeserve serve` (Gunicorn, either worker class) on a free loopback port for tests.

    with run_server(repo, workers=2, extra_args=["--strict-readiness"]) as srv:
        requests.get(srv.url + "/v2/health/ready")

or, in tests, the `tapeserve_server` fixture (tests/conftest.py), which stops every server it
started at teardown. The server runs through the CLI exactly as users start it, with its own
Prometheus multiprocess directory and no Gunicorn control socket, so servers run side by side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    """A started server: its base `url`, process and log file (stdout + stderr)."""

    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    repository: Path
    _scratch: Path = field(repr=False, default=Path())
    #: The gRPC port (0: gRPC off).
    grpc_port: int = 0

    @property
    def grpc_url(self) -> str:
        """`host:port` of the gRPC service, as tritonclient.grpc takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=kwargs.pop("timeout", 30), **kwargs)

    def metrics(self) -> str:
        """The /metrics text (merged over every worker)."""
        response = self.get("/metrics")
        response.raise_for_status()
        return response.text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_models_final(self, timeout: float = 60.0) -> None:
        """Wait until no model version is LOADING (useful with --strict-readiness)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                rows = self.post("/v2/repository/index").json()
                if all(row.get("state") != "LOADING" for row in rows):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"models still loading after {timeout} s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the Gunicorn master (graceful), SIGKILL the process group if it hangs."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self._scratch, ignore_errors=True)
        return self.process.returncode


def start_server(
    repository: str | Path,
    *,
    workers: int = 1,
    threads: int = 8,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    wait: str = "ready",
    timeout: float = 60.0,
    plain_gunicorn: bool = False,
) -> RunningServer:
    """Start `tapeserve serve` on a free port and wait until it is `wait` ("ready"|"live"|"none").

    `extra_args` are further CLI options (e.g. ["--strict-readiness", "--max-body-size", "1000"]);
    `env` adds environment variables. `plain_gunicorn` starts the documented hand-written
    command (`gunicorn -c python:serve.gunicorn_conf 'serve.app:create_app()'`) with the settings
    in TAPESERVE_* variables instead of the CLI (then `extra_args` must be empty). Raises
    RuntimeError with the server log if it dies or does not become ready in `timeout` seconds.
    Call `.stop()` when done (the fixture does).
    """
    port = free_port()
    grpc_port = free_port()
    while grpc_port == port:
        grpc_port = free_port()
    repository = Path(repository).absolute()  # the server runs in its scratch folder
    scratch = Path(tempfile.mkdtemp(prefix="tapeserve-test-"))
    log_path = scratch / "server.log"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("TAPESERVE_")}
    (scratch / "metrics").mkdir()
    child_env["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    # Every test server serves gRPC too, on a port of its own (an environment variable, so a
    # server of an older revision, which knows no --grpc-port, starts as well).
    child_env["TAPESERVE_GRPC_PORT"] = str(grpc_port)
    child_env.update(env or {})
    grpc_port = int(child_env["TAPESERVE_GRPC_PORT"])
    if "--grpc-port" in extra_args:
        grpc_port = int(extra_args[list(extra_args).index("--grpc-port") + 1])
    if plain_gunicorn:
        if extra_args:
            raise ValueError("plain_gunicorn takes its settings from env, not extra_args")
        child_env.update(
            TAPESERVE_MODEL_REPOSITORY=str(repository), TAPESERVE_HOST="127.0.0.1",
            TAPESERVE_PORT=str(port), TAPESERVE_WORKERS=str(workers),
            TAPESERVE_THREADS=str(threads),
        )  # fmt: skip
        argv = [sys.executable, "-m", "gunicorn", "-c", "python:serve.gunicorn_conf",
                "serve.app:create_app()"]  # fmt: skip
    else:
        argv = [
            sys.executable, "-m", "serve.cli", "serve",
            "--model-repository", str(repository),
            "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--threads", str(threads),
            *extra_args,
        ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=scratch,  # whatever the server writes by relative path stays out of the checkout
            start_new_session=True,
        )
    server = RunningServer(
        f"http://127.0.0.1:{port}", port, process, log_path, Path(repository), scratch, grpc_port
    )
    path = {"ready": "/v2/health/ready", "live": "/v2/health/live"}.get(wait)
    if path is None:
        return server
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = server.log()
            server.stop()
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_text[-4000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url + path, timeout=2).status_code == 200:
                return server
        time.sleep(0.05)
    log_text = server.log()
    server.stop()
    raise RuntimeError(f"server not {wait} after {timeout} s:\n{log_text[-4000:]}")


@contextlib.contextmanager
def run_server(repository: str | Path, **options) -> Iterator[RunningServer]:
    """`start_server` as a context manager that always stops the server."""
    server = start_server(repository, **options)
    try:
        yield server
    finally:
        server.stop()
