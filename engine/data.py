"""Dataset, TensorDataset and DataLoader (batching, seeded shuffling, drop_last).

Shuffling is reproducible and resumable: with a `seed`, epoch e's order is drawn from
`numpy.random.default_rng((seed, e))`, so it depends only on (seed, epoch) and a resumed run
sees the same batches as an uninterrupted one. The loader counts epochs itself (each full
iteration is one epoch); `set_epoch(e)` sets it explicitly, as torch's DistributedSampler does.
Without a seed the order comes from `engine.random`'s generator (`engine.manual_seed`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from engine import random as engine_random
from engine.tensor import Tensor


class Dataset:
    """A map-style dataset: `len(ds)` samples, `ds[i]` one sample (a tuple of arrays)."""

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class TensorDataset(Dataset):
    """Samples are rows of equally long arrays (or Tensors), e.g. TensorDataset(x, y)."""

    def __init__(self, *arrays: Any) -> None:
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(np.asarray(a.data if isinstance(a, Tensor) else a) for a in arrays)
        lengths = {len(a) for a in self.arrays}
        if len(lengths) != 1:
            raise ValueError(
                f"TensorDataset arrays differ in length: {[len(a) for a in self.arrays]}"
            )

    def __getitem__(self, index: Any) -> tuple[np.ndarray, ...]:
        return tuple(a[index] for a in self.arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])


def default_collate(samples: Sequence[Any]) -> Any:
    """Stack a list of samples (tuples of arrays or arrays) into batch arrays."""
    first = samples[0]
    if isinstance(first, (tuple, list)):
        return tuple(np.stack([np.asarray(s[i]) for s in samples]) for i in range(len(first)))
    return np.stack([np.asarray(s) for s in samples])


class DataLoader:
    """Iterate a dataset in batches of engine Tensors.

    A TensorDataset is batched by fancy indexing (one copy per array per batch); other datasets
    go through `collate_fn` one sample at a time.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int | None = None,
        collate_fn: Callable[[Sequence[Any]], Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, int(batch_size)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.collate_fn = collate_fn or default_collate
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's order the next iteration uses (for resuming)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> np.ndarray:
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        if self.seed is not None:
            return np.random.default_rng((self.seed, self.epoch)).permutation(n)
        return engine_random.generator().permutation(n)

    def __iter__(self) -> Iterator[Any]:
        order = self._order()
        self.epoch += 1
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            idx = order[start : start + self.batch_size]
            if isinstance(self.dataset, TensorDataset):
                batch = tuple(a[idx] for a in self.dataset.arrays)
            else:
                batch = self.collate_fn([self.dataset[int(i)] for i in idx])
            yield _to_tensors(batch)


def _to_tensors(batch: Any) -> Any:
    if isinstance(batch, tuple):
        return tuple(_to_tensors(b) for b in batch)
    if isinstance(batch, list):
        return [_to_tensors(b) for b in batch]
    if isinstance(batch, dict):
        return {k: _to_tensors(v) for k, v in batch.items()}
    if isinstance(batch, np.ndarray):
        return Tensor(batch)
    return batch
