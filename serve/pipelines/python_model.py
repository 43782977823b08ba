"""Python models (Triton's Python backend): each instance of a model.py runs in a child process.

Why a child process and not the worker (measured in benchmarks/python_model_ipc.py): a call
through the process costs tens of microseconds more than calling `execute` in the worker, and
buys what a worker thread cannot give: a model that hangs is killed at its deadline (a thread
cannot be stopped), one that crashes (os._exit, a segfault in native code) or exhausts its
memory limit takes only its own process down, and its GIL is not the worker's. The server
answers the requests of the failed call with an error and starts a fresh process for the next.

The batcher hands `run` the requests of a batch one by one (Batcher(per_request=True)), as
Triton hands them to `execute`; BLS calls of the model come back over the same socket and are
run by the server through the inference core's in-process API (InferenceCore.infer).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serve.core.errors import failure_for
from serve.lifecycle.config import TRITON_TO_V2, ModelConfig, declared_specs
from serve.lifecycle.runtime import InferenceError
from serve.pipelines import wire
from serve.protocol.datatypes import datatype_of
from serve.protocol.types import TensorSpec

log = logging.getLogger("tapeserve.python_model")

MODEL_FILE = "model.py"
#: How long `execute` may run when neither the request nor the config sets a deadline.
DEFAULT_EXECUTE_TIMEOUT_S = 30.0
START_TIMEOUT_S = 120.0
#: TritonError codes -> HTTP status (Triton's HttpCodeFromError), and back for BLS errors.
_STATUS = {0: 400, 1: 500, 2: 404, 3: 400, 4: 503, 5: 501, 6: 400, 7: 400}
_TRITON_CODE = {400: 3, 404: 2, 503: 4, 501: 5, 504: 4}

#: (model name, version, feeds, requested output names, deadline) -> [(name, array)]; raises.
BlsCall = Callable[[str, int, dict[str, np.ndarray], list[str], float | None], list]


class PythonModelError(RuntimeError):
    """model.py failed to import or initialize; the message is its traceback's last line."""

    verbatim = True


@dataclass
class PythonModelSpec:
    """What a process needs to host one version of a Python model."""

    name: str
    version: int
    model_dir: Path
    config: ModelConfig
    memory_bytes: int = 0

    @property
    def model_file(self) -> Path:
        return self.model_dir / str(self.version) / MODEL_FILE

    def args(self, instance: int) -> dict[str, str]:
        """`initialize(args)`: Triton's keys, all strings; model_config is Triton-shaped JSON."""
        config = {k: v for k, v in self.config.to_json().items() if v is not None}
        config["name"] = self.name
        config.pop("ensemble_scheduling", None)
        return {
            "model_config": json.dumps(config),
            "model_instance_kind": "CPU",
            "model_instance_name": f"{self.name}_{instance}",
            "model_instance_device_id": "0",
            "model_repository": str(self.model_dir),
            "model_version": str(self.version),
            "model_name": self.name,
        }


def _exit_reason(process: subprocess.Popen) -> str:
    try:
        code = process.wait(2)
    except subprocess.TimeoutExpired:
        return "it stopped answering"
    if code < 0:
        return f"it was killed by signal {signal.Signals(-code).name}"
    return f"it exited with status {code}"


class PythonModelInstance:
    """One model.py process; `run` is a batcher RequestsRunner. Restarted after a failure."""

    def __init__(self, spec: PythonModelSpec, instance: int, bls: BlsCall) -> None:
        self.spec = spec
        self.instance = instance
        self.bls = bls
        self.outputs = declared_specs(spec.config, "output")
        self._process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    # -- the process ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the process and initialize the model; PythonModelError with the reason."""
        parent, child = socket.socketpair()
        wire.tune(parent)
        wire.tune(child)
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")  # one worker's share of the CPU, as ORT's sessions get
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "serve.pipelines.python_stub", str(child.fileno())],
                pass_fds=[child.fileno()],
                env=env,
                cwd=self.spec.model_dir,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            child.close()
        parent.settimeout(START_TIMEOUT_S)
        try:
            wire.send(
                parent,
                {
                    "model_file": str(self.spec.model_file),
                    "args": self.spec.args(self.instance),
                    "memory_bytes": self.spec.memory_bytes,
                },
            )
            reply = wire.recv(parent)
        except (OSError, wire.ChannelClosed) as exc:
            self._kill(process, parent)
            why = "it did not start in time" if isinstance(exc, TimeoutError) else None
            raise PythonModelError(why or _exit_reason(process)) from None
        if reply[0] == "init_error":
            self._kill(process, parent)
            raise PythonModelError(reply[1])
        self._process, self._sock = process, parent
        log.info(
            "python model %s version %s instance %d: process %d ready",
            self.spec.name,
            self.spec.version,
            self.instance,
            process.pid,
        )

    @staticmethod
    def _kill(process: subprocess.Popen, sock: socket.socket) -> None:
        sock.close()
        if process.poll() is None:
            process.kill()
        process.wait()

    def _fail(self, why: str) -> str:
        """Stop the process after a failure; the next call starts a fresh one."""
        assert self._process is not None and self._sock is not None
        if self._process.poll() is None:
            self._process.kill()
        reason = _exit_reason(self._process)
        self._sock.close()
        self._process = self._sock = None
        log.error(
            "python model %s version %s: %s (%s); a new process starts with the next request",
            self.spec.name,
            self.spec.version,
            why,
            reason,
        )
        return reason

    def close(self) -> None:
        """`finalize()`, then end the process (killed if finalize takes over 10 s)."""
        with self._lock:
            if self._process is None or self._sock is None:
                return
            try:
                self._sock.settimeout(10)
                wire.send(self._sock, ("finalize",))
                wire.recv(self._sock)
            except (OSError, wire.ChannelClosed):
                pass
            self._kill(self._process, self._sock)
            self._process = self._sock = None

    # -- requests ------------------------------------------------------------------------

    def run(
        self,
        batch: list[dict[str, np.ndarray]],
        deadline: float | None,
        parameters: list[dict | None] | None = None,
    ) -> list:
        """Execute a batch of requests (with each one's parameters, for `request.parameters()`);
        each gets its outputs (in signature order) or an error."""
        with self._lock:
            if self._process is not None and self._process.poll() is not None:
                self._fail("the process ended while idle")  # killed from outside, say
            try:
                if self._process is None:
                    self.start()
            except PythonModelError as exc:
                error = InferenceError(f"model {self.spec.name!r} cannot restart: {exc}", 503)
                return [error] * len(batch)
            return self._execute(batch, deadline, parameters or [None] * len(batch))

    def _execute(
        self, batch: list[dict[str, np.ndarray]], deadline: float | None, parameters: list
    ) -> list:
        name = self.spec.name
        sock = self._sock
        assert sock is not None
        if deadline is None:
            deadline = time.monotonic() + DEFAULT_EXECUTE_TIMEOUT_S
        requested = [s.name for s in self.outputs]
        try:
            requests = [
                (feeds, requested, "", params or {})
                for feeds, params in zip(batch, parameters, strict=True)
            ]
            wire.send(sock, ("execute", requests))
            while True:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                reply = wire.recv(sock)
                if reply[0] != "bls":
                    break
                wire.send(sock, self._bls(reply, deadline))
        except TimeoutError:
            limit = deadline - time.monotonic()
            self._fail(f"execute passed its deadline ({limit:+.3f} s)")
            error = InferenceError(
                f"model {name!r}: execute did not return before the request's "
                "deadline; its process was stopped",
                504,
            )
            return [error] * len(batch)
        except (OSError, wire.ChannelClosed):
            reason = self._fail("the process ended during execute")
            error = InferenceError(
                f"model {name!r}: its process ended while executing the "
                f"request ({reason}); it is restarted",
                500,
            )
            return [error] * len(batch)
        if reply[0] == "failed":
            if "restarted" in reply[1]:
                self._fail(reply[1])
            error = InferenceError(
                f"Failed to process the request(s) for model {name!r}, message: {reply[1]}", 500
            )
            return [error] * len(batch)
        return [self._outputs(answer) for answer in reply[1]]

    def _outputs(self, answer: tuple) -> list[np.ndarray] | Exception:
        if answer[0] == "error":
            return InferenceError(answer[1], _STATUS.get(answer[2], 500))
        returned = dict(answer[1])
        outputs = []
        for spec in self.outputs:
            array = returned.get(spec.name)
            if array is None:
                return InferenceError(
                    f"model {self.spec.name!r} returned no output "
                    f"{spec.name!r} (it returned: {', '.join(returned)})",
                    500,
                )
            problem = _mismatch(spec, array)
            if problem:
                return InferenceError(f"model {self.spec.name!r}: {problem}", 500)
            outputs.append(array)
        return outputs

    def _bls(self, message: tuple, deadline: float) -> tuple:
        _, model, version, feeds, requested, timeout_us = message
        if timeout_us:
            deadline = min(deadline, time.monotonic() + timeout_us / 1e6)
        try:
            return ("bls_result", self.bls(model, int(version), feeds, list(requested), deadline))
        except Exception as exc:
            failure = failure_for(exc)
            return ("bls_error", failure.message, _TRITON_CODE.get(failure.status, 1))


def _mismatch(spec: TensorSpec, array: np.ndarray) -> str | None:
    """Why an output does not fit its declared datatype and shape (None when it fits)."""
    try:
        datatype = datatype_of(array.dtype)
    except ValueError as exc:
        return f"output {spec.name!r}: {exc}"
    if datatype != spec.datatype:
        triton = {v: k for k, v in TRITON_TO_V2.items()}.get(spec.datatype, spec.datatype)
        return f"output {spec.name!r} is {datatype}, the config declares {spec.datatype} ({triton})"
    if len(array.shape) != len(spec.shape) or any(
        d not in (-1, g) for d, g in zip(spec.shape, array.shape, strict=False)
    ):
        declared = list(spec.shape)
        return f"output {spec.name!r} has shape {list(array.shape)}, the config declares {declared}"
    return None


def start_instances(spec: PythonModelSpec, count: int, bls: BlsCall) -> list[PythonModelInstance]:
    """`count` started processes of the model; PythonModelError (others closed) on failure."""
    instances: list[PythonModelInstance] = []
    try:
        for i in range(count):
            instance = PythonModelInstance(spec, i, bls)
            instance.start()
            instances.append(instance)
    except BaseException:
        for instance in instances:
            instance.close()
        raise
    return instances
