"""Verification that is part of every export: the ONNX model in onnxruntime against the engine.

Errors are reported per check as max absolute error and max relative error, where the relative
error is max|onnx - engine| / max|engine| over each output (normwise, so outputs near zero do
not turn rounding noise into huge ratios). Float models fail above a relative tolerance;
quantized models are judged by accuracy (or top-1 agreement without labels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

EngineFn = Callable[[np.ndarray], list[np.ndarray]]
DEFAULT_RTOL = 1e-4


def session(model: bytes) -> ort.InferenceSession:
    """A CPU session on serialized model bytes (the file the server will load)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run_session(sess: ort.InferenceSession, x: np.ndarray) -> list[np.ndarray]:
    return sess.run(None, {sess.get_inputs()[0].name: x})


def errors(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max abs error, max normwise relative error) over all outputs; shape mismatch raises."""
    worst_abs = worst_rel = 0.0
    for ref, out in zip(reference, got, strict=True):
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        if ref.shape != out.shape:
            raise AssertionError(f"output shape {out.shape} differs from the engine's {ref.shape}")
        if ref.size == 0:
            continue
        err = float(np.max(np.abs(ref - out)))
        scale = float(np.max(np.abs(ref)))
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / scale if scale > 0 else err)
    return worst_abs, worst_rel


@dataclass
class Check:
    what: str
    batch: int
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""


@dataclass
class Report:
    """The verification table `tapeserve export` prints; `ok` decides the exit status."""

    checks: list[Check] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    ok: bool = True

    def add(self, check: Check) -> None:
        self.checks.append(check)
        self.ok = self.ok and check.passed

    def table(self) -> str:
        lines = [f"{'check':<34} {'batch':>5} {'max abs err':>12} {'max rel err':>12}  result"]
        for c in self.checks:
            result = "ok" if c.passed else "FAIL"
            note = f"  ({c.note})" if c.note else ""
            lines.append(
                f"{c.what:<34} {c.batch:>5} {c.max_abs:>12.3e} {c.max_rel:>12.3e}  {result}{note}"
            )
        return "\n".join([*lines, *self.summary])


def random_inputs(example: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Fresh inputs like `example`: normal floats, or integers within the example's range."""
    shape = (batch, *example.shape[1:])
    if np.issubdtype(example.dtype, np.integer):
        lo, hi = int(example.min()), int(example.max())
        return rng.integers(lo, hi + 1, size=shape).astype(example.dtype)
    return rng.standard_normal(shape).astype(example.dtype)


def verify_parity(
    model: bytes,
    engine_fn: EngineFn,
    example: np.ndarray,
    *,
    batch_sizes: Sequence[int] = (1, 7),
    samples: np.ndarray | None = None,
    rtol: float = DEFAULT_RTOL,
    seed: int = 0,
) -> Report:
    """Compare onnxruntime with the engine on random batches (sizes other than the example's)
    and on real `samples` when given."""
    sess, rng, report = session(model), np.random.default_rng(seed), Report()
    batches = [("random inputs", random_inputs(example, b, rng)) for b in batch_sizes]
    if samples is not None and len(samples):
        batches.append(("dataset samples", np.asarray(samples, dtype=example.dtype)))
    for what, x in batches:
        try:
            max_abs, max_rel = errors(engine_fn(x), run_session(sess, x))
        except AssertionError as exc:  # a shape that does not follow the batch size
            report.add(Check(what, len(x), float("nan"), float("nan"), False, str(exc)))
            continue
        report.add(Check(what, len(x), max_abs, max_rel, max_rel <= rtol))
    report.summary.append(f"tolerance: max rel err <= {rtol:g}")
    return report


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of class scores [N, C] against integer labels."""
    return float(np.mean(np.argmax(outputs, axis=-1) == labels) * 100.0)


def verify_quantized(
    float_model: bytes,
    quant_model: bytes,
    example: np.ndarray,
    *,
    samples: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    max_drop: float = 1.0,
    seed: int = 0,
) -> Report:
    """Judge an int8 model by accuracy against the float one (top-1 agreement without labels);
    errors are shown for information, not judged (int8 rounding is expected)."""
    float_sess, quant_sess, report = session(float_model), session(quant_model), Report()
    if samples is not None and labels is not None and len(samples):
        x, what = np.asarray(samples, dtype=example.dtype), "dataset samples"
    else:
        x, what = random_inputs(example, 64, np.random.default_rng(seed)), "random inputs"
    ref, got = run_session(float_sess, x), run_session(quant_sess, x)
    max_abs, max_rel = errors(ref, got)
    if labels is not None and what == "dataset samples":
        before, after = accuracy(ref[0], labels), accuracy(got[0], labels)
        label = "accuracy"
    else:
        before, after = 100.0, accuracy(got[0], np.argmax(ref[0], axis=-1))
        label = "top-1 agreement with float"
    drop = before - after
    note = f"{label} {before:.2f}% -> {after:.2f}% ({-drop:+.2f} points)"
    report.add(Check(f"int8 vs float, {what}", len(x), max_abs, max_rel, drop <= max_drop, note))
    report.summary.append(f"tolerance: {label} drop <= {max_drop:g} points")
    return report
