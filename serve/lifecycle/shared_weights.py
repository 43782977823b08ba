"""One copy of a model's weights in RAM for every Gunicorn worker on the machine.

Each worker creates its own onnxruntime session (sessions do not survive a fork), and by default
each session reads the weights onto its heap and then pre-packs them for its kernels: N workers,
N private copies (4 workers held 3.8x the memory of 1). onnxruntime memory-maps external data
that is aligned, and pre-packing is what makes the private copy; switching it off shares the
weights but costs 1.3-2x in MatMul-heavy models. Instead, the first worker to load a model lets
onnxruntime write an *optimized copy* of it into the server's runtime folder: graph optimizations
applied, every initializer and the pre-packed weights in one aligned external data file
(`session.save_external_prepacked_constant_initializers`). Every worker then loads that copy,
and onnxruntime maps the pre-packed weights from the file: the kernels run as fast as with
private pre-packing, and the page cache holds one copy for all workers.

The copy is written once per server under a file lock, into a temporary folder renamed into
place, and deleted with the runtime folder when the server stops. Anything that goes wrong
(disk full, a graph onnxruntime cannot serialize) is logged and the worker loads the original.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort

log = logging.getLogger("tapeserve.runtime")

#: Models smaller than this (model file plus external data) are loaded as they are: a private
#: copy costs less than the optimized copy's start-up.
MIN_SHARED_BYTES = 8 * 1024 * 1024
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"


def model_bytes(path: Path) -> int:
    """The model file plus every external data file beside it that the graph references."""
    total = path.stat().st_size
    for data in external_files(path):
        with contextlib.suppress(OSError):
            total += data.stat().st_size
    return total


def external_files(path: Path) -> set[Path]:
    model = onnx.load(str(path), load_external_data=False)
    files = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    files.add(path.parent / entry.value)
    return files


def _key(path: Path, source: bytes | None) -> str:
    """Names the copy after what it was made from: the file (and its data files) as they are
    now, or the rewritten model bytes, and this onnxruntime."""
    digest = hashlib.sha256(ort.__version__.encode())
    for file in sorted({path, *external_files(path)}):
        st = file.stat()
        digest.update(f"{os.path.realpath(file)}:{st.st_size}:{st.st_mtime_ns}".encode())
    if source is not None:
        digest.update(hashlib.sha256(source).digest())
    return digest.hexdigest()[:24]


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def optimized_copy(
    path: Path, cache: Path, options: ort.SessionOptions, source: bytes | None = None
) -> Path:
    """The optimized copy of the model at `path` (or of `source`, its rewritten bytes) in
    `cache`, written by the first caller; later callers (other workers) get the same file.

    `options` are the session options the workers use (optimization level, threads); the copy
    is written with them plus the settings that put every initializer and the pre-packed
    weights into one aligned external data file. Raises on failure (the caller falls back).
    """
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = _key(path, source)
    final = cache / key
    with _locked(cache / f"{key}.lock"):
        if (final / MODEL_FILE).exists():
            return final / MODEL_FILE
        started = time.monotonic()
        staging = cache / f"{key}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        try:
            writer = _writer_options(options, staging / MODEL_FILE)
            ort.InferenceSession(
                source if source is not None else str(path),
                sess_options=writer,
                providers=["CPUExecutionProvider"],
            )
            if not (staging / DATA_FILE).exists():
                raise RuntimeError("onnxruntime wrote no external data file")
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info(
            "optimized copy of %s with pre-packed weights written in %.2f s (%.0f MiB), "
            "shared by every worker",
            path,
            time.monotonic() - started,
            (final / DATA_FILE).stat().st_size / 2**20,
        )
    return final / MODEL_FILE


def _writer_options(options: ort.SessionOptions, target: Path) -> ort.SessionOptions:
    writer = ort.SessionOptions()
    writer.intra_op_num_threads = options.intra_op_num_threads
    writer.inter_op_num_threads = options.inter_op_num_threads
    writer.graph_optimization_level = options.graph_optimization_level
    writer.log_severity_level = options.log_severity_level
    writer.optimized_model_filepath = str(target)
    writer.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", DATA_FILE
    )
    writer.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    writer.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    return writer
