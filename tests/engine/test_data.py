"""DataLoader batching and seeded, resumable shuffling; the bundled digits and their split."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.data import DataLoader, Dataset, TensorDataset
from engine.datasets import CLASS_LABELS, INPUT_SCALING, load_digits


def _ids(loader):
    return [b[0].data.tolist() for b in loader]


def test_batches_cover_the_dataset_in_order_and_drop_last():
    ds = TensorDataset(np.arange(10), np.arange(10) * 2)
    batches = list(DataLoader(ds, batch_size=4))
    assert [len(b[0].data) for b in batches] == [4, 4, 2]
    assert isinstance(batches[0][0], engine.Tensor)
    np.testing.assert_array_equal(batches[2][1].data, [16, 18])
    assert len(DataLoader(ds, batch_size=4)) == 3
    dropped = DataLoader(ds, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [len(b[0].data) for b in dropped] == [4, 4]


def test_seeded_shuffle_is_a_permutation_reproducible_and_new_each_epoch():
    ds = TensorDataset(np.arange(50))
    a, b = DataLoader(ds, 8, shuffle=True, seed=3), DataLoader(ds, 8, shuffle=True, seed=3)
    first, second = _ids(a), _ids(a)
    assert sorted(sum(first, [])) == list(range(50))
    assert first != second  # a new order every epoch
    assert _ids(b) == first and _ids(b) == second
    c = DataLoader(ds, 8, shuffle=True, seed=3)
    c.set_epoch(1)  # resuming at epoch 1 replays epoch 1's order
    assert _ids(c) == second


def test_unseeded_shuffle_follows_manual_seed():
    ds = TensorDataset(np.arange(30))
    engine.manual_seed(5)
    a = _ids(DataLoader(ds, 30, shuffle=True))
    engine.manual_seed(5)
    assert _ids(DataLoader(ds, 30, shuffle=True)) == a


def test_map_style_dataset_goes_through_collate():
    class Squares(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.array([i, i * i], dtype=np.float32), i

    (x, y), (x2, _) = list(DataLoader(Squares(), batch_size=3))
    assert x.shape == (3, 2) and x.data.dtype == np.float32
    np.testing.assert_array_equal(y.data, [0, 1, 2])
    assert x2.shape == (2, 2)


def test_errors():
    with pytest.raises(ValueError, match="differ in length"):
        TensorDataset(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        DataLoader(TensorDataset(np.zeros(3)), batch_size=0)


def test_digits_are_the_real_1797_with_a_fixed_stratified_split():
    d = load_digits()
    assert d.x_train.shape == (1438, 64) and d.x_test.shape == (359, 64)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert set(np.unique(d.x_train * 16)) <= set(range(17))  # counts 0..16 scaled by 1/16
    test_counts = np.bincount(d.y_test, minlength=10)
    train_counts = np.bincount(d.y_train, minlength=10)
    assert test_counts.sum() + train_counts.sum() == 1797
    np.testing.assert_allclose(test_counts / (test_counts + train_counts), 0.2, atol=0.01)
    again = load_digits()
    np.testing.assert_array_equal(again.y_test, d.y_test)  # fixed: independent of any seed
    # the known first image of the file (a zero) is in one split or the other
    first = np.array([0, 0, 5, 13, 9, 1, 0, 0], dtype=np.float32) / 16
    assert any(np.array_equal(row[:8], first) for row in np.concatenate([d.x_train, d.x_test]))
    images = load_digits(images=True)
    assert images.x_train.shape == (1438, 1, 8, 8) and images.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(images.x_test.reshape(-1, 64), d.x_test)
    assert d.labels == CLASS_LABELS == tuple("0123456789")
    assert "divided by 16" in INPUT_SCALING and d.scaling == INPUT_SCALING
