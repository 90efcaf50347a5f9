"""fmnist/raw.py: IDX parsing and checks, on files the tests write; fuzzed with hypothesis."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import idx_bytes, synthetic, write_raw
from fmnist.errors import DataError
from fmnist.raw import check_pair, parse_idx


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
