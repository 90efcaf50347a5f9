"""IDX parsing and checks, on files the tests write; fuzzed with hypothesis."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import idx_bytes, synthetic, write_raw
from fmnist.augment import augment_batch as augment
from fmnist.classifier import normalize
from fmnist.raw import check_pair, parse_idx
from fmnist.splits import class_counts, split_train_val
from fmnist.errors import DataError


def test_reads_the_files_it_is_given(tmp_path):
    folder = write_raw(tmp_path / "gz", n_train=50, n_test=20)
    images, labels = synthetic(50, 1)
    got_images = parse_idx((folder / "train-images-idx3-ubyte.gz").read_bytes(), "x", "images")
    got_labels = parse_idx((folder / "train-labels-idx1-ubyte.gz").read_bytes(), "x", "labels")
    assert got_images.shape == (50, 28, 28) and got_images.dtype == np.uint8
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_plain_and_gzipped_give_the_same_arrays():
    images, _ = synthetic(10, 3)
    raw = idx_bytes(images, 2051)
    np.testing.assert_array_equal(parse_idx(raw, "a", "images"), parse_idx(gzip.compress(raw), "a", "images"))


GOOD = idx_bytes(synthetic(5, 0)[0], 2051)


@pytest.mark.parametrize("raw, kind, message", [
    (b"", "images", "empty"),
    (b"\x00\x00", "images", "truncated"),
    (gzip.compress(GOOD)[:-20], "images", "not a readable gzip"),
    (b"\x1f\x8b" + b"junk" * 10, "images", "not a readable gzip"),
    (GOOD, "labels", "wrong magic number 2051"),
    (idx_bytes(np.zeros((3, 28, 27)), 2051), "images", "27, expected 28x28"),
    (GOOD[:-1], "images", "truncated"),
    (GOOD + b"\x00", "images", "too long"),
    (GOOD[:10], "images", "truncated"),
])
def test_bad_files_get_a_clear_error_naming_the_file(raw, kind, message):
    with pytest.raises(DataError, match=message) as err:
        parse_idx(raw, "some/file-idx", kind)
    assert str(err.value).startswith("some/file-idx")


def test_counts_that_disagree_and_labels_out_of_range():
    images, labels = synthetic(10, 0)
    with pytest.raises(DataError, match="holds 10 images but lab holds 9 labels"):
        check_pair(images, labels[:9], "img", "lab")
    labels = labels.copy()
    labels[4] = 12
    with pytest.raises(DataError, match="lab: label 12 at position 4, expected 0-9"):
        check_pair(images, labels, "img", "lab")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.builds(lambda b: gzip.compress(b), st.binary(max_size=200)),
       st.sampled_from(["images", "labels"]))
def test_any_bytes_give_arrays_or_a_data_error(raw, kind):
    try:
        out = parse_idx(raw, "fuzz", kind)
    except DataError:
        return
    assert out.dtype == np.uint8
    assert out.ndim == (3 if kind == "images" else 1)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4), st.integers(0, 30), st.integers(0, 30), st.binary(max_size=64))
def test_fuzzed_headers_with_the_right_magic(n, h, w, tail):
    raw = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, h, w)) + tail
    try:
        out = parse_idx(raw, "fuzz", "images")
    except DataError:
        return
    assert out.shape == (n, 28, 28) and len(tail) == n * 784


def test_split_is_disjoint_complete_and_seeded():
    train, val = split_train_val(100, 20, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))
    again, _ = split_train_val(100, 20, seed=3)
    other, _ = split_train_val(100, 20, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)
    with pytest.raises(DataError, match="cannot hold out 100"):
        split_train_val(100, 100, seed=0)


def test_class_counts_and_normalize():
    labels = torch.tensor([0, 0, 9, 3])
    counts = class_counts(labels)
    assert counts["T-shirt/top"] == 2 and counts["Ankle boot"] == 1 and sum(counts.values()) == 4
    x = normalize(torch.full((2, 1, 28, 28), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 28, 28) and torch.allclose(x, torch.tensor((1 - 0.2860) / 0.3530))


def test_augment_keeps_shape_and_is_seeded():
    x = torch.randn(16, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_shift_moves_whole_images_and_fills_with_background():
    x = torch.arange(28.0).repeat(64, 1, 28, 1)  # every row of every image reads 0..27
    shifted = augment(x, torch.Generator().manual_seed(0), flip=False, shift=2)
    background = (0 - 0.2860) / 0.3530
    moves = set()
    for image in shifted[:, 0]:
        blank_rows = (image == background).all(1)
        assert blank_rows.sum() <= 2
        row = image[~blank_rows][0]
        inside = row[row != background]
        # the row itself, moved left or right by at most 2 pixels
        assert len(inside) >= 26 and torch.equal(inside, torch.arange(inside[0], inside[0] + len(inside)))
        moves.add(int(inside[0]) if inside[0] > 0 else len(inside) - 28)
    assert moves == {-2, -1, 0, 1, 2}


def test_erase_blanks_one_rectangle_in_about_the_asked_share_of_images():
    x = torch.ones(2000, 1, 28, 28)
    erased = augment(x, torch.Generator().manual_seed(0), flip=False, erase=0.5)
    hit = (erased == 0).flatten(1)
    share = hit.any(1).float().mean()
    assert 0.45 < share < 0.55
    areas = hit.sum(1)[hit.any(1)].float() / (28 * 28)
    assert areas.min() >= 0.01 and areas.max() <= 0.3
    # every blank patch is one rectangle: its bounding box is all blank
    for image in (erased[:50, 0] == 0):
        if image.any():
            rows, cols = image.any(1).nonzero(), image.any(0).nonzero()
            assert image[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


def test_every_augmentation_draws_from_the_generator_only():
    x = torch.randn(16, 1, 28, 28)
    a = augment(x, torch.Generator().manual_seed(1), shift=2, erase=0.5)
    torch.manual_seed(123)  # the global RNG plays no part
    b = augment(x, torch.Generator().manual_seed(1), shift=2, erase=0.5)
    assert torch.equal(a, b) and a.shape == x.shape
