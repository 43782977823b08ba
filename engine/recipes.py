"""Ready training recipes on the bundled digits: `digits-mlp` and `digits-cnn`.

Each recipe seeds `engine.random`, builds its model, trains with `engine.train.fit` on the fixed
train split, reports accuracy on the held-out test split and saves a checkpoint that records
how to rebuild the model, the input shape ([64] for the MLP, [1, 8, 8] for the CNN), the input
scaling and the class labels "0".."9" (what `tapeserve export` needs).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

import engine
from engine import checkpoint, nn, optim
from engine import functional as F
from engine.data import DataLoader, TensorDataset
from engine.datasets import digits
from engine.train import History, evaluate, fit


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    images: bool  # [N, 1, 8, 8] input rather than [N, 64]
    build: Callable[[], nn.Module]
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    label_smoothing: float


def digits_mlp() -> nn.Sequential:
    """64 -> 256 -> 128 -> 10 with ReLU and dropout."""
    return nn.Sequential(
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(128, 10),
    )


def digits_cnn() -> nn.Sequential:
    """Two 3x3 conv blocks with BatchNorm, a 2x2 max pool and a small classifier head."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(32 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


# AdamW with cosine decay and label smoothing 0.1 for both; sizes chosen so each trains in
# well under a minute on 2 cores.
RECIPES: dict[str, Recipe] = {
    "digits-mlp": Recipe(
        "digits-mlp", "MLP on flattened 8x8 digits", False, digits_mlp, 40, 32, 2e-3, 1e-2, 0.1
    ),
    "digits-cnn": Recipe(
        "digits-cnn", "small CNN on 1x8x8 digit images", True, digits_cnn, 12, 64, 3e-3, 1e-2, 0.1
    ),
}


@dataclass
class RecipeResult:
    recipe: str
    test_accuracy: float
    test_loss: float
    history: History
    checkpoint: Path | None
    model: nn.Module


def run(
    name: str,
    *,
    epochs: int | None = None,
    out: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    log_path: str | os.PathLike[str] | None = None,
    tensorboard_dir: str | os.PathLike[str] | None = None,
    blas_threads: int | None = 1,
) -> RecipeResult:
    """Train recipe `name`, evaluate on the test split, and save a checkpoint to `out` if given.

    `blas_threads` caps numpy's BLAS threads while training (None leaves them as they are).
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    epochs = recipe.epochs if epochs is None else epochs
    engine.manual_seed(seed)
    data = digits.load_digits(images=recipe.images)
    model = recipe.build()
    optimizer = optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = optim.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    train_loader = DataLoader(
        TensorDataset(data.x_train, data.y_train),
        batch_size=recipe.batch_size,
        shuffle=True,
        seed=seed,
    )
    test_loader = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=512)
    loss_fn = functools.partial(F.cross_entropy, label_smoothing=recipe.label_smoothing)
    # Small matrices: one BLAS thread is faster, and far faster when the cores are shared.
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        history = fit(
            model,
            optimizer,
            train_loader,
            test_loader,
            epochs=epochs,
            loss_fn=loss_fn,
            scheduler=scheduler,
            log_path=log_path,
            tensorboard_dir=tensorboard_dir,
            progress=progress,
        )
    result = evaluate(model, test_loader)
    path = None
    if out is not None:
        path = Path(out)
        meta: dict[str, Any] = {
            "recipe": name,
            "seed": seed,
            "epochs": epochs,
            "dataset": "UCI ML hand-written digits (8x8), engine.datasets.load_digits",
            "test_accuracy": result["accuracy"],
            "split": f"stratified, {digits.TEST_FRACTION:.0%} test, seed {digits.SPLIT_SEED}",
            "test_loss": result["loss"],
        }
        checkpoint.save(
            path,
            model,
            optimizer,
            scheduler=scheduler,
            epoch=epochs,
            input_shape=data.input_shape,
            input_dtype="float32",
            input_description=data.scaling,
            labels=data.labels,
            meta=meta,
        )
    return RecipeResult(name, result["accuracy"], result["loss"], history, path, model)
