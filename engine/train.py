"""`fit`: a training loop with a progress bar, per-epoch validation and metric logs.

Each epoch trains on every batch of `train_loader` (progress bar: loss, accuracy, samples/s),
then evaluates `val_loader` in eval mode without recording a tape, steps the scheduler, appends
one JSON line to `log_path`, and, when `tensorboardX` is installed and `tensorboard_dir` is
given, writes the same scalars plus a histogram of every parameter.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import engine
from engine import functional as F
from engine.nn import Module
from engine.nn.utils import clip_grad_norm_
from engine.optim import Optimizer
from engine.tensor import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class History:
    """Per-epoch metrics; `history["val_accuracy"]` gives one metric as a list, like Keras."""

    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def history(self) -> dict[str, list[Any]]:
        keys = dict.fromkeys(k for record in self.epochs for k in record)
        return {k: [record.get(k) for record in self.epochs] for k in keys}

    def __getitem__(self, key: str) -> list[Any]:
        return self.history[key]

    def __len__(self) -> int:
        return len(self.epochs)

    @property
    def last(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}


def _count_correct(output: Tensor, target: Tensor) -> int | None:
    """Correct top-1 predictions, or None when the task is not classification by index."""
    out, tgt = np.asarray(output.data), np.asarray(target.data)
    if out.ndim != 2 or tgt.ndim != 1 or tgt.dtype.kind not in "iu":
        return None
    return int(np.count_nonzero(out.argmax(axis=1) == tgt))


def evaluate(
    model: Module, loader: Iterable[Any], loss_fn: LossFn = F.cross_entropy
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) over `loader`, in eval mode, no tape."""
    was_training = model.training
    model.eval()
    total_loss, total_correct, seen, classified = 0.0, 0, 0, True
    try:
        with engine.no_grad():
            for x, y in loader:
                out = model(x)
                n = len(y.data)
                total_loss += float(loss_fn(out, y).item()) * n
                correct = _count_correct(out, y)
                classified = classified and correct is not None
                total_correct += correct or 0
                seen += n
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    result = {"loss": total_loss / seen}
    if classified:
        result["accuracy"] = total_correct / seen
    return result


class _TensorBoard:
    """Scalars and weight histograms through tensorboardX, when it is installed."""

    def __init__(self, logdir: str | os.PathLike[str] | None) -> None:
        self.writer = None
        if logdir is None:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(logdir))

    def epoch(self, model: Module, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = record["epoch"]
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                group = "val" if key.startswith("val_") else "train"
                self.writer.add_scalar(f"{group}/{key.removeprefix('val_')}", value, step)
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", np.asarray(p.data), step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", np.asarray(p.grad), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def fit(
    model: Module,
    optimizer: Optimizer,
    train_loader: Iterable[Any],
    val_loader: Iterable[Any] | None = None,
    epochs: int = 1,
    loss_fn: LossFn = F.cross_entropy,
    scheduler: Any = None,
    log_path: str | os.PathLike[str] | None = None,
    tensorboard_dir: str | os.PathLike[str] | None = None,
    *,
    start_epoch: int = 0,
    clip_grad_norm: float | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
) -> History:
    """Train `model` for epochs `start_epoch .. epochs-1` and return the per-epoch History.

    `start_epoch` resumes an interrupted run: a loader with `set_epoch` then replays the same
    shuffles. `on_epoch_end(epoch, record)` runs after each epoch (e.g. to save a checkpoint).
    """
    history = History()
    board = _TensorBoard(tensorboard_dir)
    log_file = None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in finally
    try:
        for epoch in range(start_epoch, epochs):
            record, bar = _train_epoch(
                model, optimizer, train_loader, loss_fn, epoch, epochs, clip_grad_norm, progress
            )
            if val_loader is not None:
                for key, value in evaluate(model, val_loader, loss_fn).items():
                    record[f"val_{key}"] = value
            bar.set_postfix(_postfix(record), refresh=True)
            bar.close()
            if scheduler is not None:
                scheduler.step()
            history.epochs.append(record)
            if log_file is not None:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            board.epoch(model, record)
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
    finally:
        if log_file is not None:
            log_file.close()
        board.close()
    return history


def _train_epoch(
    model: Module,
    optimizer: Optimizer,
    loader: Iterable[Any],
    loss_fn: LossFn,
    epoch: int,
    epochs: int,
    clip_grad_norm: float | None,
    progress: bool,
) -> tuple[dict[str, Any], tqdm]:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    model.train()
    lr = optimizer.param_groups[0]["lr"]
    total_loss, total_correct, seen, classified = 0.0, 0, 0, True
    start = time.perf_counter()
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(loader, total=total, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress)
    for step, (x, y) in enumerate(bar):
        optimizer.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        if clip_grad_norm is not None:
            clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        n = len(y.data)
        total_loss += float(loss.item()) * n
        correct = _count_correct(out, y)
        classified = classified and correct is not None
        total_correct += correct or 0
        seen += n
        if progress and step % 10 == 0:
            running = {
                "loss": total_loss / seen,
                "accuracy": total_correct / seen if classified else None,
                "samples_per_s": seen / max(time.perf_counter() - start, 1e-9),
            }
            bar.set_postfix(_postfix(running), refresh=False)
    seconds = time.perf_counter() - start
    if seen == 0:
        raise ValueError("fit: the training loader yielded no samples")
    record: dict[str, Any] = {"epoch": epoch, "loss": total_loss / seen}
    if classified:
        record["accuracy"] = total_correct / seen
    record.update(lr=lr, seconds=seconds, samples_per_s=seen / max(seconds, 1e-9))
    return record, bar


_SHORT = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}


def _postfix(record: dict[str, Any]) -> dict[str, str]:
    """The progress bar's summary: loss, accuracy, samples/s (and validation when known)."""
    out = {
        short: f"{record[key]:.4f}" for key, short in _SHORT.items() if record.get(key) is not None
    }
    out["samples/s"] = f"{record['samples_per_s']:.0f}"
    return out
