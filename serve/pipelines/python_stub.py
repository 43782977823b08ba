"""The process one Python model runs in: `python -m serve.pipelines.python_stub FD`.

It imports the model's model.py with this package's `triton_python_backend_utils` in place of
Triton's, calls `initialize(args)`, then answers the server's messages on the socket FD:
`execute` batches (and, while one runs, the model's BLS calls go back to the server), and
`finalize` at unload. A failure is reported by its traceback's last line; MemoryError ends the
process after answering, so the server starts a fresh one.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import socket
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np

from serve.pipelines import triton_python_backend_utils as pb_utils
from serve.pipelines import wire


def last_line(exc: BaseException) -> str:
    """`ValueError: message`: the last line of the exception's traceback."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _where(exc: BaseException) -> str:
    """The model.py frames of the traceback, as Triton's "At:" lines show them."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith("model.py")]
    lines = "".join(f"\n  {f.filename}({f.lineno}): {f.name}" for f in frames)
    return f"\n\nAt:{lines}\n" if lines else ""


def _load(model_file: str) -> Any:
    spec = importlib.util.spec_from_file_location("model", model_file)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["model"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.TritonPythonModel()


class _Bls:
    """Sends a model's BLS requests to the server and waits for the answer (one at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __call__(self, request: pb_utils.InferenceRequest) -> pb_utils.InferenceResponse:
        inputs = {t.name(): t.as_numpy() for t in request.inputs()}
        wire.send(
            self.sock,
            (
                "bls",
                request.model_name(),
                request.model_version,
                inputs,
                request.requested_output_names(),
                request.timeout(),
            ),
        )
        reply = wire.recv(self.sock)
        if reply[0] == "bls_error":
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(reply[1], reply[2]))
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in reply[1]])


def _answer(response: Any) -> tuple:
    if not isinstance(response, pb_utils.InferenceResponse):
        return (
            "error",
            f"execute returned {type(response).__name__}, not an InferenceResponse",
            pb_utils.TritonError.INTERNAL,
        )
    if response.has_error():
        error = response.error()
        return ("error", error.message(), error.code())
    return ("ok", [(t.name(), np.asarray(t.as_numpy())) for t in response.output_tensors()])


def _execute(model: Any, batch: list[tuple]) -> tuple:
    requests = [
        pb_utils.InferenceRequest(
            inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
            requested_output_names=requested,
            request_id=request_id,
            parameters=parameters,
        )
        for inputs, requested, request_id, parameters in batch
    ]
    responses = model.execute(requests)
    if not isinstance(responses, list) or len(responses) != len(requests):
        got = len(responses) if isinstance(responses, list) else 0
        return (
            "failed",
            "Number of InferenceResponse objects do not match the number of "
            "InferenceRequest objects. InferenceRequest(s) size is:"
            f"{len(requests)}, and InferenceResponse(s) size is:{got}",
        )
    return ("done", [_answer(r) for r in responses])


def serve(sock: socket.socket) -> int:
    setup = wire.recv(sock)
    if setup.get("memory_bytes"):
        limit = setup["memory_bytes"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.path.insert(0, os.path.dirname(setup["model_file"]))
    sys.modules["triton_python_backend_utils"] = pb_utils
    pb_utils._configure_logger(setup["args"]["model_name"])
    try:
        model = _load(setup["model_file"])
        if hasattr(model, "initialize"):
            model.initialize(setup["args"])
    except BaseException as exc:  # an import or initialize failure: the model is UNAVAILABLE
        wire.send(sock, ("init_error", last_line(exc), _where(exc)))
        return 1
    wire.send(sock, ("ready",))
    pb_utils._bls_call = _Bls(sock)
    while True:
        try:
            message = wire.recv(sock)
        except wire.ChannelClosed:
            return 0
        if message[0] == "finalize":
            if hasattr(model, "finalize"):
                try:
                    model.finalize()
                except Exception as exc:
                    print(f"finalize raised {last_line(exc)}", file=sys.stderr)
            wire.send(sock, ("finalized",))
            return 0
        try:
            wire.send(sock, _execute(model, message[1]))
        except MemoryError as exc:
            wire.send(sock, ("failed", f"{last_line(exc)}; the model's process is restarted"))
            return 3
        except Exception as exc:
            wire.send(sock, ("failed", last_line(exc) + _where(exc)))


def _exit_with_parent() -> None:
    """End when the worker that started this process is gone (killed while the model hangs, so
    no end of stream reaches the main thread)."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    sock = socket.socket(fileno=int(sys.argv[1]))
    os._exit(serve(sock))  # no atexit work of the model's libraries after the answer


if __name__ == "__main__":
    main()
