"""Try a new model in a throw-away child process before any serving process loads it.

A tiny ONNX file can demand many GiB at session creation (a ConstantOfShape of a giant shape), and
fuzzed models have crashed onnxruntime outright. Loading such a model inside a serving worker would
take the worker (and every request it holds) down. So each new model version is first loaded in a
child forked from a clean fork server (multiprocessing "forkserver": onnxruntime imported, no
session, no thread pools of a worker), which caps its own address space with RLIMIT_AS, creates
the InferenceSession with one thread, runs one warm-up inference on synthesized inputs and sends a
verdict. The parent enforces a time limit. A crash (signal), an allocation failure or a timeout
becomes a `ProbeResult` with a reason; nothing of it is inherited by the caller.

By hand: `python -m serve.load_probe MODEL [--memory-limit-bytes N]` prints the verdict as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import multiprocessing.context
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MEMORY_LIMIT_BYTES = 4 * 1024**3
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ProbeResult:
    """The verdict of one probe: `ok`, or a `reason` a user can read; wall time in `seconds`."""

    ok: bool
    reason: str | None
    seconds: float
    peak_rss_bytes: int | None = None


def probe_model(
    path: str | os.PathLike[str],
    memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    warmup: bool = True,
) -> ProbeResult:
    """Load `path` (and run a warm-up inference) in a child process; never raises for the model."""
    ctx = _forkserver()
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_probe_child,
        args=(os.fspath(path), memory_limit_bytes, warmup, writer),
        name="tapeserve-load-probe",
        daemon=True,
    )
    start = time.monotonic()
    child.start()
    writer.close()
    try:
        child.join(timeout_s)
        seconds = time.monotonic() - start
        if child.is_alive():
            child.kill()
            child.join()
            return ProbeResult(
                False,
                f"loading the model did not finish within {timeout_s:g} s (load probe killed)",
                seconds,
            )
        verdict = reader.recv() if reader.poll() else None
    finally:
        reader.close()
    if verdict is None:
        code = child.exitcode or 0
        if code < 0:
            sig = signal.Signals(-code).name
            hint = " (likely killed for memory)" if sig == "SIGKILL" else ""
            why = f"crashed the load probe with {sig}{hint}"
        else:
            why = f"made the load probe exit with status {code} without a verdict"
        return ProbeResult(False, f"loading the model {why}", seconds)
    return ProbeResult(verdict["ok"], verdict["reason"], seconds, verdict.get("peak_rss_bytes"))


_context: multiprocessing.context.ForkServerContext | None = None
_context_lock = threading.Lock()


def _forkserver() -> multiprocessing.context.ForkServerContext:
    """A fork server with onnxruntime imported but no session: each probe forks from it in ~50 ms
    instead of starting an interpreter (~350 ms), and never inherits a worker's ORT threads."""
    global _context
    with _context_lock:
        if _context is None:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["numpy", "onnxruntime", "serve.load_probe"])
            _context = ctx
        return _context


def _probe_child(path: str, limit: int, warmup: bool, conn) -> None:
    conn.send(_child(path, limit, warmup))
    conn.close()


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
            return ProbeResult(cached["ok"], cached["reason"], 0.0, cached.get("peak_rss_bytes"))
        result = probe_model(path, memory_limit_bytes, timeout_s)
        tmp = verdict_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {"ok": result.ok, "reason": result.reason, "peak_rss_bytes": result.peak_rss_bytes}
            )
        )
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


def _describe_failure(stage: str, exc: BaseException, limit: int) -> str:
    text = str(exc).strip() or type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, MemoryError) or "alloc" in lowered or "out of memory" in lowered:
        return (
            f"ran out of memory while {stage} (load probe limit {limit // 1024**2} MiB): "
            f"{text[:500]}"
        )
    return f"failed while {stage}: {text[:500]}"


def _child(path: str, limit: int, warmup: bool) -> dict:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stage = "importing onnxruntime"
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
            session.run(None, synthesize_inputs(session))
    except BaseException as exc:  # report everything: the verdict is the product
        return {"ok": False, "reason": _describe_failure(stage, exc, limit)}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ok": True, "reason": None, "peak_rss_bytes": peak_kib * 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="path of the .onnx file to load")
    parser.add_argument("--memory-limit-bytes", type=int, default=DEFAULT_MEMORY_LIMIT_BYTES)
    parser.add_argument("--no-warmup", action="store_true", help="only create the session")
    args = parser.parse_args(argv)
    verdict = _child(args.model, args.memory_limit_bytes, not args.no_warmup)
    sys.stdout.write(json.dumps(verdict) + "\n")
    sys.stdout.flush()
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
