"""fmnist/raw.py: IDX parsing and checks, on files the tests write (fuzzed with
hypothesis); the download, from a local HTTP server."""

from __future__ import annotations

import gzip
import http.server
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist.core.errors import DataError
from fmnist.raw import check_pair, download, parse_idx
from helpers.data import idx_bytes, synthetic, write_raw
from helpers.repos import file_md5


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
@given(st.binary(max_size=200) | st.builds(gzip.compress, st.binary(max_size=200)),
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


# --- the download ---------------------------------------------------------------

class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def mirror(tiny_raw):
    """A local HTTP server on 127.0.0.1 serving the tiny gzipped files."""
    handler = lambda *a, **kw: _Files(*a, directory=str(tiny_raw), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_checks_md5_and_falls_back_to_the_next_mirror(mirror, tiny_raw, tmp_path):
    name = "train-labels-idx1-ubyte"
    good = {f"{name}.gz": file_md5(tiny_raw / f"{name}.gz")}
    dead = "http://127.0.0.1:9/"  # nothing listens on the discard port
    data = download(name, tmp_path, [dead, mirror], good)
    assert gzip.decompress(data)[:4] == (2049).to_bytes(4, "big")

    with pytest.raises(DataError) as err:
        download(name, tmp_path, [mirror], {f"{name}.gz": "0" * 32})
    assert f"could not download {name}.gz" in str(err.value) and "MD5" in str(err.value)
    assert "FASHION_MNIST_DIR" in str(err.value)

    with pytest.raises(DataError) as err:
        download(name, tmp_path, [dead], good)
    assert f"{dead}{name}.gz" in str(err.value) and "FASHION_MNIST_DIR" in str(err.value)
