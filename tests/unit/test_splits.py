"""fmnist/splits.py: the train/validation split, the class counts, and the checks of a
prepared split file (load_split) on damaged copies; fuzzed with hypothesis."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmnist.core.dataset import CLASSES
from fmnist.core.errors import DataError
from fmnist.core.io import torch_bytes
from fmnist.splits import MAX_SPLIT_BYTES, class_counts, load_nonempty_split, load_split, split_file, split_train_val
from helpers.damage import one_line
from helpers.data import synthetic


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


# --- a prepared split file, damaged -------------------------------------------

def good_split(n: int = 12) -> dict:
    images, labels = synthetic(n, seed=0)
    return {"images": torch.from_numpy(images), "labels": torch.from_numpy(labels).long()}


def _split(**changes) -> bytes:
    split = good_split()
    split.update(changes)
    return torch_bytes({k: v for k, v in split.items() if v is not None})


GOOD_SPLIT = torch_bytes(good_split())
DAMAGED_SPLITS = {
    "empty": (b"", "the file is empty"),
    "truncated": (GOOD_SPLIT[:len(GOOD_SPLIT) // 2], "not a readable torch file, truncated or damaged"),
    "garbage": (b"\x80\x02garbage" * 50, "not a torch file (it doesn't start like one)"),
    "a list": (torch_bytes([1, 2, 3]), "expected a dict with 'images' and 'labels', found a list"),
    "a bare tensor": (torch_bytes(torch.zeros(3, 28, 28)), "found a Tensor"),
    "no labels": (_split(labels=None), "found keys ['images']"),
    "float images": (_split(images=torch.zeros(12, 28, 28)),
                     "'images' should be uint8 (N, 28, 28), found torch.float32"),
    "32x32 images": (_split(images=torch.zeros(12, 32, 32, dtype=torch.uint8)), "found torch.uint8 (12, 32, 32)"),
    "int32 labels": (_split(labels=torch.zeros(12, dtype=torch.int32)), "'labels' should be int64 (N,)"),
    "2-d labels": (_split(labels=torch.zeros(12, 2, dtype=torch.long)), "found torch.int64 (12, 2)"),
    "fewer labels": (_split(labels=torch.zeros(11, dtype=torch.long)), "12 images but 11 labels"),
    "label 10": (_split(labels=torch.full((12,), 10)), "labels outside 0-9"),
    # Found while fuzzing: a view on one stored value (stride 0) is a million images in 2 KB; with a
    # billion, the label checks ran for half a minute and the train stage's hash asked for 784 GB.
    "a million images in one byte": (_split(images=torch.zeros(1, 1, 1, dtype=torch.uint8).expand(10**6, 28, 28),
                                           labels=torch.zeros(1, dtype=torch.long).expand(10**6)),
                                     "holds a tensor of (1000000,) that the file doesn't hold the values of"),
}


@pytest.mark.parametrize("damage", DAMAGED_SPLITS)
def test_a_damaged_split_is_a_data_error_naming_the_file(tmp_path, damage):
    data, expected = DAMAGED_SPLITS[damage]
    path = tmp_path / "train.pt"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        load_split(path)
    one_line(str(err.value), f"{path}: ", expected, "dvc repro --force prepare")


def test_a_missing_split_or_a_folder_in_its_place(tmp_path):
    with pytest.raises(DataError, match=r"train.pt: missing; run the prepare stage first \(dvc repro\)"):
        load_split(tmp_path / "train.pt")
    (tmp_path / "train.pt").mkdir()
    with pytest.raises(DataError, match=r"train.pt: a folder, not a file; re-create it"):
        load_split(tmp_path / "train.pt")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(GOOD_SPLIT)), flips=st.lists(st.tuples(st.integers(0, len(GOOD_SPLIT) - 1),
                                                                     st.integers(1, 255)), max_size=4))
def test_any_truncation_or_flipped_bytes_give_checked_tensors_or_a_data_error(tmp_path, cut, flips):
    data = bytearray(GOOD_SPLIT[:cut])
    for at, xor in flips:
        if at < len(data):
            data[at] ^= xor
    path = tmp_path / "val.pt"
    path.write_bytes(bytes(data))
    try:
        images, labels = load_split(path)
    except DataError as exc:
        one_line(str(exc), f"{path}: ")
    else:
        assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28) and len(labels) == len(images)
        assert labels.dtype == torch.int64 and (len(labels) == 0 or 0 <= labels.min() <= labels.max() <= 9)


# --- behaviour on a few images (make mutate) ------------------------------------------

def test_no_validation_images_is_allowed_and_a_negative_count_is_not():
    train, val = split_train_val(10, 0, seed=0)
    assert train.tolist() == list(range(10)) and val.tolist() == []
    with pytest.raises(DataError, match="cannot hold out -1 validation images from 10 training images"):
        split_train_val(10, -1, seed=0)


def test_class_counts_name_all_ten_classes_even_absent_ones():
    counts = class_counts(torch.tensor([1, 1, 0]))
    assert list(counts) == list(CLASSES) and list(counts.values()) == [1, 2] + [0] * 8
    assert all(type(c) is int for c in counts.values())


def test_a_split_file_holds_copies_of_just_its_images_and_labels(tmp_path):
    images, labels = (torch.from_numpy(a) for a in synthetic(10, seed=0))
    saved = split_file(images[:3], labels[:3].long())
    assert list(saved) == ["images", "labels"]
    assert saved["images"].untyped_storage().nbytes() == 3 * 28 * 28  # not the 10 images' storage
    assert saved["labels"].untyped_storage().nbytes() == 3 * 8
    images[0] = 0  # the copies don't follow the originals
    assert not torch.equal(saved["images"][0], images[0])
    path = tmp_path / "val.pt"
    path.write_bytes(torch_bytes(saved))
    got_images, got_labels = load_split(path)
    assert torch.equal(got_images, saved["images"]) and torch.equal(got_labels, saved["labels"])


def test_a_good_split_loads_labels_0_to_9_included_and_so_does_an_empty_one(tmp_path):
    split = good_split(20)
    assert split["labels"].min() == 0 and split["labels"].max() == 9
    path = tmp_path / "train.pt"
    path.write_bytes(torch_bytes(split))
    images, labels = load_split(path)
    assert torch.equal(images, split["images"]) and torch.equal(labels, split["labels"])
    path.write_bytes(torch_bytes({"images": torch.zeros(0, 28, 28, dtype=torch.uint8),
                                  "labels": torch.zeros(0, dtype=torch.long)}))
    images, labels = load_split(path)
    assert images.shape == (0, 28, 28) and labels.shape == (0,)


@pytest.mark.parametrize("changes, expected", [
    ({"images": [[0] * 28] * 28}, "'images' should be uint8 (N, 28, 28), found list;"),
    ({"labels": "0123"}, "'labels' should be int64 (N,), found str;"),
    ({"labels": torch.full((12,), -1)}, "labels outside 0-9"),
])
def test_images_or_labels_that_are_not_tensors_or_a_negative_label(tmp_path, changes, expected):
    path = tmp_path / "test.pt"
    path.write_bytes(_split(**changes))
    with pytest.raises(DataError) as err:
        load_split(path)
    one_line(str(err.value), f"{path}: ", expected, "dvc repro --force prepare")


def test_a_split_file_larger_than_the_whole_data_set_is_refused_unread(tmp_path):
    path = tmp_path / "train.pt"
    with path.open("wb") as f:
        f.truncate(MAX_SPLIT_BYTES + 1)  # sparse: nothing written
    with pytest.raises(DataError) as err:
        load_split(path)
    one_line(str(err.value), f"{path}: ", "larger than a prepared split of Fashion-MNIST can be")


def test_a_split_meant_for_validation_or_testing_must_hold_images(tmp_path):
    path = tmp_path / "val.pt"
    path.write_bytes(torch_bytes({"images": torch.zeros(0, 28, 28, dtype=torch.uint8),
                                  "labels": torch.zeros(0, dtype=torch.long)}))
    with pytest.raises(DataError) as err:
        load_nonempty_split(path, "validation")
    assert str(err.value) == f"{path}: holds no validation images; re-create it with `dvc repro --force prepare`"
    path.write_bytes(torch_bytes(good_split(1)))
    images, labels = load_nonempty_split(path, "test")
    assert images.shape == (1, 28, 28) and labels.shape == (1,)


def test_a_label_past_the_ten_classes_is_not_dropped_from_the_counts_unseen():
    with pytest.raises(ValueError, match="longer"):
        class_counts(torch.tensor([0, 12]))
