"""Try a new model in a throw-away child process before any serving process loads it.

A tiny ONNX file can demand many GiB at session creation (a ConstantOfShape of a giant shape), and
fuzzed models have crashed onnxruntime outright. Loading such a model inside a serving worker would
take the worker (and every request it holds) down. So each new model version is first loaded in a
child forked from a small helper process (`python -m serve.lifecycle.load_probe --serve`:
onnxruntime imported, no session, none of a worker's ORT thread pools). The child caps its own
address space with RLIMIT_AS, creates the InferenceSession with one thread, runs one warm-up
inference on synthesized inputs and writes a verdict; the helper kills it at the time limit. A crash
(signal), an allocation failure or a timeout becomes a `ProbeResult` with a reason; nothing of it is
inherited by the caller.

The warm-up follows the serving rule of `serve.lifecycle.registry`: zeros of the declared shapes can
be invalid input for a model (a Range with step 0), so an ordinary error of that warm-up is only a
`warning` and the model is accepted; running out of memory, crashing or timing out during it rejects
the model. Warm-up samples from config.json are run by the worker, where a failure makes the model
unavailable.

By hand: `python -m serve.lifecycle.load_probe MODEL [--memory-limit-bytes N]` prints the verdict as
JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MEMORY_LIMIT_BYTES = 4 * 1024**3
DEFAULT_TIMEOUT_S = 60.0
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class ProbeResult:
    """The verdict of one probe: `ok`, or a `reason` a user can read; wall time in `seconds`."""

    ok: bool
    reason: str | None
    seconds: float
    peak_rss_bytes: int | None = None
    #: Why the synthesized warm-up failed when that did not reject the model, else None.
    warning: str | None = None


def probe_model(
    path: str | os.PathLike[str],
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup: bool = True,
) -> ProbeResult:
    """Load `path` (and run a warm-up inference) in a child process; never raises for the model."""
    request = {
        "path": os.path.abspath(path),
        "limit": memory_limit_bytes,
        "timeout": timeout_s,
        "warmup": warmup,
    }
    start = time.monotonic()
    verdict = _helper.ask(request, timeout_s)
    return ProbeResult(
        verdict["ok"],
        verdict["reason"],
        time.monotonic() - start,
        verdict.get("peak_rss_bytes"),
        verdict.get("warning"),
    )


class _ForkHelper:
    """`python -m serve.lifecycle.load_probe --serve`: a helper with onnxruntime imported and no
    session.

    It forks one child per probe (about 50 ms, where a fresh interpreter costs about 350 ms), so
    no probe ever inherits a serving worker's ORT thread pools. Requests and verdicts are JSON
    lines on its stdin and stdout; one helper per process, started on first use, restarted if it
    dies, gone when its parent's end of the pipe closes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def ask(self, request: dict, timeout_s: float) -> dict:
        with self._lock:
            try:
                proc = self._running()
                proc.stdin.write((json.dumps(request) + "\n").encode())  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
                line = _read_line(proc, timeout_s + 30)
                return json.loads(line)
            except (OSError, ValueError, TimeoutError) as exc:
                self._stop()
                return {"ok": False, "reason": f"the load probe helper failed: {exc}"}

    def _running(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [_PROJECT_ROOT, env.get("PYTHONPATH")])
            )
            env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "serve.lifecycle.load_probe", "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
            if _read_line(self._proc, 120).strip() != b"ready":
                raise OSError("the load probe helper did not start")
        return self._proc

    def _stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None


def _read_line(proc: subprocess.Popen, timeout_s: float) -> bytes:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise OSError(f"the helper exited with status {proc.wait()}")
    return line


_helper = _ForkHelper()


def _serve() -> int:
    """The helper's loop: one forked child per request line, one verdict line per request."""
    import onnxruntime  # noqa: F401  (imported once, here, before any fork)

    import serve.protocol.datatypes  # noqa: F401  (used by the warm-up)

    out = sys.stdout.buffer
    try:
        out.write(b"ready\n")
        out.flush()
        for line in sys.stdin.buffer:
            request = json.loads(line)
            verdict = _fork_probe(
                request["path"], request["limit"], request["timeout"], request["warmup"]
            )
            out.write(json.dumps(verdict).encode() + b"\n")
            out.flush()
    except BrokenPipeError:  # the worker that started this helper is gone: nothing to answer
        os._exit(0)
    return 0


def _fork_probe(path: str, limit: int, timeout_s: float, warmup: bool) -> dict:
    """Probe in a forked child; a timeout kills it, a signal or missing verdict is a reason."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: probe, write the verdict, exit without cleanup
        os.close(read_fd)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # only the helper's own lines go to its stdout
        verdict = _child(path, limit, warmup)
        with contextlib.suppress(OSError):
            os.write(write_fd, json.dumps(verdict).encode())
        os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + timeout_s
    data = b""
    timed_out = False
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while True:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                break
            chunk = pipe.read(65536)
            if not chunk:
                break
            data += chunk
    _, status = os.waitpid(pid, 0)
    if timed_out:
        return {
            "ok": False,
            "reason": f"loading the model did not finish within {timeout_s:g} s "
            "(load probe killed)",
        }
    with contextlib.suppress(ValueError):
        return json.loads(data)
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        hint = " (likely killed for memory)" if sig == "SIGKILL" else ""
        return {"ok": False, "reason": f"loading the model crashed the load probe with {sig}{hint}"}
    code = os.WEXITSTATUS(status)
    return {"ok": False, "reason": f"the load probe exited with status {code} without a verdict"}


def probe_once(
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None,
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ProbeResult:
    """`probe_model`, run once per file version for all the workers sharing `cache_dir`.

    The first worker to ask probes under an exclusive lock; the others wait on the lock and read
    its verdict. A verdict is keyed by the file's identity (device, inode, size, mtime) and the
    memory limit, so a rewritten file is probed again. Without `cache_dir` it always probes.
    """
    if not cache_dir:
        return probe_model(path, memory_limit_bytes, timeout_s)
    st = os.stat(path)
    identity = f"{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"  # survives a rename
    key = hashlib.sha256(f"{identity}|{memory_limit_bytes}".encode()).hexdigest()[:32]
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    verdict_path = folder / f"probe-{key}.json"
    with open(folder / f"probe-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(verdict_path.read_text())
            return ProbeResult(
                cached["ok"],
                cached["reason"],
                0.0,
                cached.get("peak_rss_bytes"),
                cached.get("warning"),
            )
        result = probe_model(path, memory_limit_bytes, timeout_s)
        tmp = verdict_path.with_suffix(f".tmp{os.getpid()}")
        verdict = {
            "ok": result.ok,
            "reason": result.reason,
            "peak_rss_bytes": result.peak_rss_bytes,
            "warning": result.warning,
        }
        tmp.write_text(json.dumps(verdict))
        os.replace(tmp, verdict_path)
        return result


def synthesize_inputs(session) -> dict:
    """Zero-filled inputs for every model input, variable dimensions set to 1."""
    import numpy as np

    from serve.protocol.datatypes import ONNX_TYPE_TO_V2, V2_TO_NUMPY

    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d >= 0 else 1 for d in arg.shape]
        datatype = ONNX_TYPE_TO_V2.get(arg.type)
        if datatype is None or datatype not in V2_TO_NUMPY:
            raise ValueError(f"input {arg.name!r} has type {arg.type}, which cannot be warmed up")
        dtype = V2_TO_NUMPY[datatype]
        feeds[arg.name] = (
            np.full(shape, "", dtype=object) if dtype.kind == "O" else np.zeros(shape, dtype=dtype)
        )
    return feeds


def _is_memory_failure(exc: BaseException) -> bool:
    lowered = str(exc).lower()
    return isinstance(exc, MemoryError) or "alloc" in lowered or "out of memory" in lowered


def _describe_failure(stage: str, exc: BaseException, limit: int) -> str:
    text = str(exc).strip() or type(exc).__name__
    if _is_memory_failure(exc):
        return (
            f"ran out of memory while {stage} (load probe limit {limit // 1024**2} MiB): "
            f"{text[:500]}"
        )
    return f"failed while {stage}: {text[:500]}"


def _child(path: str, limit: int, warmup: bool) -> dict:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stage = "importing onnxruntime"
    warning = None
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)  # the verdict carries the error; keep logs quiet
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        stage = "creating the inference session"
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        if warmup:
            stage = "running the warm-up inference"
            try:
                session.run(None, synthesize_inputs(session))
            except Exception as exc:
                if _is_memory_failure(exc):
                    raise
                # zeros may be invalid input for this model: logged by the caller, not fatal
                warning = _describe_failure("running the warm-up on synthesized zeros", exc, limit)
    except BaseException as exc:  # report everything: the verdict is the product
        return {"ok": False, "reason": _describe_failure(stage, exc, limit)}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ok": True, "reason": None, "peak_rss_bytes": peak_kib * 1024, "warning": warning}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="path of the .onnx file to load")
    parser.add_argument("--serve", action="store_true", help="run as the fork helper")
    parser.add_argument("--memory-limit-bytes", type=int, default=DEFAULT_MEMORY_LIMIT_BYTES)
    parser.add_argument("--no-warmup", action="store_true", help="only create the session")
    args = parser.parse_args(argv)
    if args.serve:
        return _serve()
    if not args.model:
        parser.error("give a model path (or --serve)")
    verdict = _child(args.model, args.memory_limit_bytes, not args.no_warmup)
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
