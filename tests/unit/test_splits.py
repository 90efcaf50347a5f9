"""fmnist/splits.py: the train/validation split and the class counts."""

from __future__ import annotations

import pytest
import torch

from fmnist.errors import DataError
from fmnist.splits import class_counts, split_train_val


def test_split_is_disjoint_complete_and_seeded():
    train, val = split_train_val(100, 20, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again, _ = split_train_val(100, 20, seed=3)
    other, _ = split_train_val(100, 20, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)
    with pytest.raises(DataError, match="cannot hold out 100"):
        split_train_val(100, 100, seed=0)


def test_class_counts_name_each_class():
    labels = torch.tensor([0, 0, 9, 3])
    counts = class_counts(labels)
    assert counts["T-shirt/top"] == 2 and counts["Ankle boot"] == 1 and sum(counts.values()) == 4
