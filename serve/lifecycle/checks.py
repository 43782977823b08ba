"""Static checks of an ONNX model file before onnxruntime (or onnx) ever follows its references.

A model file is untrusted input: its tensors may point at "external data" files by any path, and
both onnx and onnxruntime have had path-traversal, symlink, hard-link and huge-allocation bugs in
how they follow those paths. So tapeserve checks every reference itself, using only the parsed
protobuf (`onnx.load(..., load_external_data=False)` reads no referenced file):

- the model file and every data file must be regular files inside the model's own version folder
  after symlinks are resolved, and must not be hard links (st_nlink > 1);
- a data location must be relative, without `..` components, NUL or backslashes;
- offset + length must lie within the data file, and the length must match the tensor's shape;
- the model file and the sum of its external data stay under configurable caps;
- a node whose operator onnxruntime does not implement (not in its own schema list, which holds
  the ONNX operators and its com.microsoft contrib operators) needs a native custom-op library:
  it is refused unless its domain is allowed. Imported operator sets are not judged: exporters
  and optimizers import domains no node uses (ai.onnx.preview, com.microsoft.experimental, ...).

Every refusal raises `ModelRejected` with a reason a user can act on.
"""

from __future__ import annotations

import functools
import math
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto

#: Domain names that mean the default ONNX domain.
_ONNX_DOMAINS = ("", "ai.onnx")

DEFAULT_MAX_MODEL_BYTES = 2 * 1024**3  # protobuf cannot hold more than 2 GiB anyway
DEFAULT_MAX_EXTERNAL_BYTES = 16 * 1024**3
#: Largest tensor (elements) a ConstantOfShape with a constant shape may ask for.
DEFAULT_MAX_CONSTANT_ELEMENTS = 256 * 1024**2


class ModelRejected(Exception):
    """A model file failed a safety check; `reason` says which and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CheckLimits:
    """What a model may reference and how big it may be."""

    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    max_external_bytes: int = DEFAULT_MAX_EXTERNAL_BYTES
    max_constant_elements: int = DEFAULT_MAX_CONSTANT_ELEMENTS
    allowed_custom_op_domains: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class CheckedModel:
    """What the checks learned: the parsed graph (external data not loaded) and its data files."""

    model: ModelProto
    data_files: tuple[Path, ...]
    external_bytes: int


def check_model_file(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    limits: CheckLimits | None = None,
) -> CheckedModel:
    """Check `path` (an .onnx file) and everything it references; raise `ModelRejected` if unsafe.

    `root` is the folder every referenced file must stay inside: the model's version folder,
    which is the folder holding the model file unless given.
    """
    limits = limits or CheckLimits()
    model_path = Path(path)
    root_dir = Path(root) if root is not None else model_path.parent
    real_root = Path(os.path.realpath(root_dir))
    real_model = _inside(model_path, real_root, "model file")
    st = _regular_single_link(real_model, "model file", str(model_path.name))
    if st.st_size > limits.max_model_bytes:
        raise ModelRejected(
            f"model file is {st.st_size} bytes, over the limit of {limits.max_model_bytes}"
        )
    try:
        model = onnx.load(str(real_model), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for garbage input
        raise ModelRejected(f"model file is not a valid ONNX model: {exc}") from exc
    if not model.HasField("graph"):
        raise ModelRejected("model file is not a valid ONNX model: it has no graph")

    _check_domains(model, limits)
    _check_constant_shapes(model, limits)
    data_files: set[Path] = set()
    total = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        data_file, length = _check_external(tensor, real_model.parent, real_root)
        data_files.add(data_file)
        total += length
        if total > limits.max_external_bytes:
            raise ModelRejected(
                f"external data adds up to more than the limit of {limits.max_external_bytes} bytes"
            )
    return CheckedModel(model, tuple(sorted(data_files)), total)


def _inside(path: Path, real_root: Path, what: str) -> Path:
    """Resolve symlinks in `path` and require the result to lie inside `real_root`."""
    real = Path(os.path.realpath(path))
    if os.path.commonpath([real, real_root]) != str(real_root):
        raise ModelRejected(
            f"{what} {path.name!r} resolves to {str(real)!r}, outside the model's version "
            f"folder {str(real_root)!r}"
        )
    return real


def _regular_single_link(real: Path, what: str, shown: str) -> os.stat_result:
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise ModelRejected(f"{what} {shown!r} does not exist") from None
    except OSError as exc:
        raise ModelRejected(f"{what} {shown!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelRejected(f"{what} {shown!r} is not a regular file")
    if st.st_nlink > 1:
        raise ModelRejected(
            f"{what} {shown!r} is a hard link ({st.st_nlink} links): hard-linked files are "
            "refused because they can alias files outside the repository"
        )
    return st


def _check_external(tensor: TensorProto, model_dir: Path, real_root: Path) -> tuple[Path, int]:
    """Check one externally stored tensor; return its resolved data file and byte length."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    name = tensor.name or "<unnamed>"
    location = info.get("location", "")
    if not location:
        raise ModelRejected(f"tensor {name!r} is stored externally but names no location")
    _check_location_text(name, location)
    real = _inside(model_dir / location, real_root, f"external data of tensor {name!r} at")
    st = _regular_single_link(real, f"external data file of tensor {name!r}", location)
    offset = _non_negative_int(name, "offset", info.get("offset", "0"))
    if "length" in info:
        length = _non_negative_int(name, "length", info["length"])
    else:
        length = st.st_size - offset
    if offset + length > st.st_size:
        raise ModelRejected(
            f"tensor {name!r} asks for bytes {offset}..{offset + length} of {location!r}, "
            f"which holds only {st.st_size} bytes"
        )
    expected = _tensor_bytes(tensor)
    if expected is not None and expected != length:
        raise ModelRejected(
            f"tensor {name!r} has shape {list(tensor.dims)} ({expected} bytes) but its external "
            f"data length is {length} bytes"
        )
    return real, length


def _check_location_text(name: str, location: str) -> None:
    if "\x00" in location:
        raise ModelRejected(f"external data location of tensor {name!r} contains a NUL byte")
    if "\\" in location:
        raise ModelRejected(
            f"external data location {location!r} of tensor {name!r} contains a backslash; "
            "use a plain relative file name"
        )
    if location.startswith("/") or (len(location) > 1 and location[1] == ":"):
        raise ModelRejected(
            f"external data location {location!r} of tensor {name!r} is an absolute path; "
            "locations must be relative to the model's version folder"
        )
    if ".." in location.split("/"):
        raise ModelRejected(
            f"external data location {location!r} of tensor {name!r} contains '..'; "
            "locations must stay inside the model's version folder"
        )


def _non_negative_int(name: str, key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ModelRejected(
            f"tensor {name!r} has a non-integer external data {key} {text!r}"
        ) from None
    if value < 0:
        raise ModelRejected(f"tensor {name!r} has a negative external data {key} {value}")
    return value


def _tensor_bytes(tensor: TensorProto) -> int | None:
    """Bytes a fixed-size tensor of this shape occupies, or None for strings and sub-byte types."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError):
        return None
    if dtype.kind in "OSU" or tensor.data_type in _SUB_BYTE_TYPES:
        return None
    return math.prod(tensor.dims) * dtype.itemsize


_SUB_BYTE_TYPES = frozenset(
    getattr(TensorProto, name)
    for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(TensorProto, name)
)


@functools.cache
def runtime_operators() -> frozenset[tuple[str, str]]:
    """(domain, operator) of every operator onnxruntime has a schema for ("" = ONNX)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    return frozenset(
        ("" if s.domain in _ONNX_DOMAINS else s.domain, s.name)
        for s in ort_state.get_all_operator_schema()
    )


def _check_domains(model: ModelProto, limits: CheckLimits) -> None:
    """Refuse a node only when onnxruntime implements no such operator (and the model defines
    no such function, and its domain is not allowed to bring a custom-op library)."""
    known = runtime_operators()
    functions = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model):
        domain = "" if node.domain in _ONNX_DOMAINS else node.domain
        if (domain, node.op_type) in known or (node.domain, node.op_type) in functions:
            continue
        if domain in limits.allowed_custom_op_domains:
            continue
        node_name = node.name or (node.output[0] if node.output else "?")
        if not domain:
            raise ModelRejected(
                f"node {node_name!r} uses operator {node.op_type!r}, which is no ONNX operator "
                "this onnxruntime implements (a newer opset, or a misspelt operator)"
            )
        raise ModelRejected(
            f"node {node_name!r} uses operator {node.op_type!r} of custom domain {domain!r}, "
            "which onnxruntime does not implement: it needs a native custom-op library; add "
            "the domain to allowed_custom_op_domains in the server config to allow it"
        )


def _check_constant_shapes(model: ModelProto, limits: CheckLimits) -> None:
    """Refuse a ConstantOfShape whose constant shape asks for a giant tensor (a memory bomb).

    Only shapes given directly by an initializer or Constant are seen here; computed shapes are
    caught by the load probe's memory limit.
    """
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == AttributeProto.TENSOR and node.output:
                    constants[node.output[0]] = attr.t
    for node in _all_nodes(model):
        if node.op_type != "ConstantOfShape" or not node.input:
            continue
        shape = constants.get(node.input[0])
        if shape is None or shape.data_location == TensorProto.EXTERNAL:
            continue
        dims = onnx.numpy_helper.to_array(shape).reshape(-1).tolist()
        if any(d < 0 for d in dims):
            continue  # invalid; onnxruntime reports it
        elements = math.prod(int(d) for d in dims)
        if elements > limits.max_constant_elements:
            raise ModelRejected(
                f"node {node.name or node.output[0]!r} (ConstantOfShape) asks for a tensor of "
                f"shape {dims} ({elements} elements), over the limit of "
                f"{limits.max_constant_elements} elements"
            )


def _graphs(model: ModelProto) -> Iterator[GraphProto]:
    """The main graph and every subgraph (If/Loop/Scan bodies, also inside local functions)."""
    stack = [model.graph]
    for function in model.functions:
        for node in function.node:
            stack.extend(_subgraphs(node.attribute))
    while stack:  # iterative: a hostile model may nest subgraphs deeply
        graph = stack.pop()
        yield graph
        for node in graph.node:
            stack.extend(_subgraphs(node.attribute))


def _subgraphs(attributes: Iterable[AttributeProto]) -> Iterator[GraphProto]:
    for attr in attributes:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _all_nodes(model: ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _all_tensors(model: ModelProto) -> Iterator[TensorProto]:
    """Every TensorProto that may carry data: initializers and tensor-valued attributes."""
    for graph in _graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from _attribute_tensors(node.attribute)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node.attribute)


def _attribute_tensors(attributes: Iterable[AttributeProto]) -> Iterator[TensorProto]:
    for attr in attributes:
        if attr.type == AttributeProto.TENSOR:
            yield attr.t
        elif attr.type == AttributeProto.TENSORS:
            yield from attr.tensors
        elif attr.type == AttributeProto.SPARSE_TENSOR:
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        elif attr.type == AttributeProto.SPARSE_TENSORS:
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
