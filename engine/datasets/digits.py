"""The 1,797 real 8x8 handwritten digits that scikit-learn also ships, with a fixed split.

The data file lives next to this module (see `data/README.md` for its source and licence), so
loading never touches the network.

Split: stratified and fixed. For each class separately, the row indices of that class are
shuffled by `numpy.random.default_rng(SPLIT_SEED)` (one generator, classes in order 0..9) and
the first `round(TEST_FRACTION * count)` of them go to the test set. That gives 359 test and
1,438 train images, each class in the same proportion in both. The split never depends on
`engine.manual_seed`, so every model is evaluated on the same held-out images.

Scaling: pixels are counts 0..16; they are divided by 16 and stored as float32 in [0, 1]
(`INPUT_SCALING` says so in words, for model metadata).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
DATA_FILE = DATA_DIR / "digits.csv.gz"
SPLIT_SEED = 20260
TEST_FRACTION = 0.2
CLASS_LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))
INPUT_SCALING = (
    "8x8 grayscale digit, row-major; each pixel is a count 0..16 of ink in a 4x4 block, "
    "divided by 16 to a float32 in [0, 1] (0 = background, 1 = full ink)"
)


@dataclass(frozen=True)
class Digits:
    """Train and test arrays: x float32 in [0, 1] shaped [N, 64] or [N, 1, 8, 8], y int64 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: tuple[str, ...] = CLASS_LABELS
    scaling: str = INPUT_SCALING

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])


@lru_cache(maxsize=1)
def _read() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(DATA_FILE, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise ValueError(f"{DATA_FILE} has shape {table.shape}, expected (1797, 65)")
    return table[:, :64], table[:, 64]


def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed stratified (train, test) row indices into the data file, each sorted."""
    _, y = _read()
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(TEST_FRACTION * len(rows)))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(images: bool = False) -> Digits:
    """Load the digits with the fixed train/test split.

    `images=False` gives x as [N, 64] (for an MLP); `images=True` gives [N, 1, 8, 8] (for a CNN).
    """
    pixels, y = _read()
    x = (pixels.astype(np.float32) / np.float32(16.0)).reshape(
        (-1, 1, 8, 8) if images else (-1, 64)
    )
    train, test = split_indices()
    return Digits(
        x_train=np.ascontiguousarray(x[train]),
        y_train=y[train].copy(),
        x_test=np.ascontiguousarray(x[test]),
        y_test=y[test].copy(),
    )


def description() -> str:
    """The dataset's description text (`data/digits.rst`)."""
    return (DATA_DIR / "digits.rst").read_text(encoding="utf-8")
