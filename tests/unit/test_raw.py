"""fmnist/raw.py: IDX parsing and checks, on files the tests write (fuzzed with
hypothesis); the download, from a local HTTP server."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import io
import sys
import threading
import urllib.request
from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist import raw as raw_module
from fmnist.core.errors import DataError
from fmnist.raw import (
    RAW_FILES,
    _read_local,
    check_pair,
    download,
    fetch_raw,
    max_file_bytes,
    parse_idx,
    read_idx,
    read_raw_split,
)
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


# --- the IDX reader's bounds and messages, reading a split, the download in detail (make mutate) ---

def idx_header(magic: int, *dims: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


def refusal(raw: bytes, kind: str) -> str:
    with pytest.raises(DataError) as err:
        parse_idx(raw, "f", kind)
    return str(err.value)


def test_the_messages_name_the_dimensions_the_header_announces():
    assert refusal(idx_bytes(np.zeros((3, 28, 27)), 2051), "images") == "f: images are 28x27, expected 28x28"
    assert refusal(GOOD[:-1], "images") == ("f: truncated: the header announces 5x28x28 values (3936 bytes with the "
                                            "header) but the file has 3935 bytes")
    assert refusal(GOOD + b"\0", "images") == ("f: too long: the header announces 5x28x28 values (3936 bytes with the "
                                               "header) but the file holds more; not read further")


def test_a_count_past_the_whole_data_set_is_refused_before_reading_and_the_whole_data_set_is_read():
    assert refusal(idx_header(2049, 70_001), "labels") == (
        "f: the header announces 70,001 labels, more than Fashion-MNIST holds (70,000 in all); not read further")
    assert parse_idx(idx_header(2049, 70_000) + bytes(70_000), "f", "labels").shape == (70_000,)


def test_every_byte_of_each_dimension_counts():
    """Dimensions are 4-byte big-endian numbers: 2**24 + 5 images is not 5 images, 2**24 + 28 rows not 28."""
    assert "announces 16,777,221 images" in refusal(idx_header(2051, 2**24 + 5, 28, 28) + bytes(5 * 784), "images")
    assert "images are 16777244x28" in refusal(idx_header(2051, 5, 2**24 + 28, 28) + bytes(5 * 784), "images")


def test_a_payload_read_in_many_chunks_is_read_whole(monkeypatch):
    monkeypatch.setattr(raw_module, "_CHUNK", 100)  # 5 images: 40 chunks
    np.testing.assert_array_equal(parse_idx(GOOD, "f", "images"), synthetic(5, 0)[0])


class Endless(io.RawIOBase):
    """`head`, then zeros: up to `size` bytes in all, counting how many were read."""

    def __init__(self, head: bytes, size: int):
        self.data, self.size, self.served = head, size, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.size - self.served)
        start = self.served
        chunk = self.data[start:start + n] if start < len(self.data) else b""
        buffer[:n] = chunk + bytes(n - len(chunk))
        self.served += n
        return n


def test_a_file_longer_than_its_header_says_is_not_read_past_the_first_extra_byte():
    stream = Endless(GOOD, 16 << 20)  # 16 MiB: the 3,936 bytes of 5 images, then zeros
    with pytest.raises(DataError, match="too long"):
        read_idx(io.BufferedReader(stream), "pipe", "images")
    assert stream.served <= len(GOOD) + io.DEFAULT_BUFFER_SIZE


@pytest.mark.parametrize("damage, message", [
    (idx_bytes(synthetic(5, 0)[1], 2049), "wrong magic number 2049"),
    (GOOD[:-1], "truncated"),
])
def test_a_gzipped_file_is_checked_as_a_plain_one_and_named(damage, message):
    assert refusal(gzip.compress(damage), "images").startswith(f"f: {message}")


def test_arrays_are_read_only():
    assert not parse_idx(GOOD, "f", "images").flags.writeable


def test_label_10_is_out_of_range_and_its_position_is_named():
    images, labels = synthetic(10, 0)
    labels = labels.copy()
    labels[2], labels[6] = 9, 10
    with pytest.raises(DataError, match=r"^lab: label 10 at position 6, expected 0-9$"):
        check_pair(images, labels, "img", "lab")


def test_read_raw_split_gives_uint8_images_and_int64_labels(tmp_path):
    folder = write_raw(tmp_path / "raw", n_train=30, n_test=10, gz=False)
    images, labels = read_raw_split(folder, "test")
    expected_images, expected_labels = synthetic(10, 2)
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and images.shape == (10, 28, 28)
    assert torch.equal(images, torch.from_numpy(expected_images))
    assert torch.equal(labels, torch.from_numpy(expected_labels).long())
    images[0] = 0  # a writable copy, not a view of the read-only bytes


def test_read_raw_split_names_a_missing_file_and_files_that_disagree(tmp_path):
    folder = write_raw(tmp_path / "raw", n_train=30, n_test=10, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(synthetic(9, 2)[1], 2049))
    with pytest.raises(DataError) as err:
        read_raw_split(folder, "test")
    assert str(err.value) == (f"{folder / 't10k-images-idx3-ubyte'} holds 10 images but "
                              f"{folder / 't10k-labels-idx1-ubyte'} holds 9 labels")
    (folder / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as err:
        read_raw_split(folder, "train")
    assert str(err.value) == f"{folder / 'train-images-idx3-ubyte'}: missing; run the download stage first (dvc repro)"


def test_the_largest_file_an_idx_file_can_be_on_disk():
    # the whole data set's bytes with the header, a thousandth more and 64 KiB for gzip's overhead
    assert max_file_bytes("labels") == (8 + 70_000) + 70 + 65_536
    assert max_file_bytes("images") == (16 + 70_000 * 784) + 54_880 + 65_536


def test_a_raw_file_past_the_largest_is_refused_unread_and_one_at_it_is_read(tmp_path):
    folder = write_raw(tmp_path / "raw", n_train=20, n_test=10)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    with labels.open("wb") as f:
        f.truncate(max_file_bytes("labels") + 1)
    with pytest.raises(DataError) as err:
        fetch_raw(str(folder), tmp_path)
    assert str(err.value) == (f"{labels}: {max_file_bytes('labels') + 1:,} bytes, larger than an IDX labels file of "
                              f"Fashion-MNIST (70,000 labels in all) can be (the limit is "
                              f"{max_file_bytes('labels'):,} bytes); check FASHION_MNIST_DIR={folder}")
    labels.write_bytes(idx_header(2049, 10) + bytes(max_file_bytes("labels") - 8))  # read, then too long
    with pytest.raises(DataError, match=f"^{labels}: too long: the header announces 10 values"):
        fetch_raw(str(folder), tmp_path)


def test_a_folder_that_is_not_there_and_a_file_gone_by_the_time_it_is_read(tmp_path):
    with pytest.raises(DataError) as err:
        fetch_raw(str(tmp_path / "nowhere"), tmp_path)
    assert str(err.value) == (f"FASHION_MNIST_DIR={tmp_path / 'nowhere'}: no such folder; point it at a folder "
                              f"holding the four IDX files")
    with pytest.raises(DataError) as err:
        _read_local(tmp_path, "train-labels-idx1-ubyte")
    assert str(err.value) == (f"{tmp_path / 'train-labels-idx1-ubyte'}: missing (neither train-labels-idx1-ubyte nor "
                              f"train-labels-idx1-ubyte.gz is in FASHION_MNIST_DIR={tmp_path})")


def test_reading_a_local_folder_says_so_and_notes_counts_other_than_the_official_ones(tmp_path, capsys):
    folder = write_raw(tmp_path / "raw", n_train=20, n_test=10)
    raw = fetch_raw(str(folder), tmp_path)
    assert set(raw) == set(RAW_FILES.values())
    assert capsys.readouterr().out == (
        f"reading the raw files from FASHION_MNIST_DIR={folder}\n"
        "note: train-images-idx3-ubyte holds 20 images; the official release has 60000\n"
        "note: t10k-images-idx3-ubyte holds 10 images; the official release has 10000\n")


def test_local_files_that_disagree_are_named(tmp_path):
    folder = write_raw(tmp_path / "raw", n_train=20, n_test=10)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(synthetic(19, 1)[1], 2049)))
    with pytest.raises(DataError, match=r"^train-images-idx3-ubyte holds 20 images but train-labels-idx1-ubyte hol"):
        fetch_raw(str(folder), tmp_path)


# --- the download, against servers on 127.0.0.1 -------------------------------------------

@contextlib.contextmanager
def serving(handle):
    """An HTTP server on 127.0.0.1 whose GET is `handle(handler)`; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            handle(self)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Bar:
    """tqdm's stand-in: what the bar was asked to show."""
    made: ClassVar[list] = []

    def __init__(self, **kwargs):
        self.kwargs, self.counted = kwargs, 0
        Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        self.counted += n


def test_a_download_asks_as_torchvision_within_a_timeout_and_shows_its_progress(tmp_path, monkeypatch, capsys):
    body = gzip.compress(idx_bytes(synthetic(20, 1)[1], 2049))
    seen = {}

    def handle(request):
        seen["agent"] = request.headers["User-Agent"]
        request.send_response(200)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    opened = []
    urlopen = urllib.request.urlopen
    monkeypatch.setattr(raw_module.urllib.request, "urlopen", lambda *a, **kw: opened.append(kw) or urlopen(*a, **kw))
    monkeypatch.setattr(raw_module, "tqdm", Bar)
    monkeypatch.setattr(raw_module, "_CHUNK", 64)
    Bar.made = []
    name = "train-labels-idx1-ubyte"
    with serving(handle) as url:
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        assert download(name, tmp_path, [url], {f"{name}.gz": md5}) == body
        assert raw_module._fetch(url + f"{name}.gz", tmp_path / "exact.gz", len(body)) == md5
    assert seen["agent"] == "pytorch/vision" and opened == [{"timeout": 60}] * 2
    assert capsys.readouterr().out == f"downloading {url}{name}.gz\n"
    [bar, exact] = Bar.made
    assert bar.kwargs == {"total": len(body), "desc": f"{name}.gz", "unit": "B", "unit_scale": True, "leave": False,
                          "disable": None}
    assert bar.counted == len(body) and exact.kwargs["total"] == len(body)  # a file of exactly the limit


def test_a_download_without_or_past_a_declared_length_is_cut_off_past_the_limit(tmp_path, monkeypatch):
    sent = []

    def handle(request):  # 64 MiB, far more than the sockets hold, without a Content-Length
        request.send_response(200)
        request.end_headers()
        try:
            for _ in range(64):
                request.wfile.write(bytes(1 << 20))
                sent.append(1)
        except OSError:  # the client hung up
            pass

    monkeypatch.setattr(raw_module, "tqdm", Bar)
    monkeypatch.setattr(raw_module, "_CHUNK", 4096)
    Bar.made = []
    with serving(handle) as url, pytest.raises(DataError) as err:
        raw_module._fetch(url + "big.gz", tmp_path / "big.gz", 10_000)
    assert str(err.value) == f"{url}big.gz: more than 10,000 bytes, larger than the file can be; not read further"
    assert Bar.made[0].kwargs["total"] is None and Bar.made[0].counted == 8192  # two chunks, the third too many
    assert len(sent) < 64

    def declared(request):  # a Content-Length past the limit: no total for the bar
        request.send_response(200)
        request.send_header("Content-Length", "20000")
        request.end_headers()
        request.wfile.write(bytes(20000))

    with serving(declared) as url, pytest.raises(DataError):
        raw_module._fetch(url + "big.gz", tmp_path / "big.gz", 10_000)
    assert Bar.made[1].kwargs["total"] is None


def test_the_downloading_line_is_out_before_the_download_starts(tmp_path, monkeypatch):
    """A mirror that hangs (up to the 60 s timeout) has been named in a log or a pipe, not held in stdout's buffer."""
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="utf-8"))  # block-buffered, as in a pipe
    shown = []

    def hangs(url, path, limit):
        shown.append(out.getvalue())
        raise TimeoutError("timed out")

    monkeypatch.setattr(raw_module, "_fetch", hangs)
    name = "train-labels-idx1-ubyte"
    with pytest.raises(DataError):
        download(name, tmp_path, ["http://mirror.invalid/"], {f"{name}.gz": "0" * 32})
    assert shown == [f"downloading http://mirror.invalid/{name}.gz\n".encode()]


def test_every_mirrors_failure_is_named_in_one_message(tmp_path, monkeypatch):
    monkeypatch.setattr(raw_module, "max_file_bytes", lambda kind: 100)
    body = bytes(1000)

    def handle(request):
        request.send_response(200)
        request.end_headers()
        request.wfile.write(body)

    name = "train-labels-idx1-ubyte"
    dead = "http://127.0.0.1:9/"
    with serving(handle) as url, pytest.raises(DataError) as err:
        download(name, tmp_path, [url, dead], {f"{name}.gz": "0" * 32})
    assert str(err.value) == (
        f"could not download {name}.gz: {url}{name}.gz: more than 100 bytes, larger than the file can be; not read "
        f"further; {dead}{name}.gz: URLError: <urlopen error [Errno 111] Connection refused>. To work offline, set "
        f"FASHION_MNIST_DIR to a folder holding the four IDX files to use a local copy")
    assert not (tmp_path / f"{name}.gz").exists()


def test_without_a_folder_the_four_files_are_downloaded_from_torchvisions_mirrors(tmp_path, tiny_raw, mirror,
                                                                                 monkeypatch):
    from torchvision.datasets import FashionMNIST

    monkeypatch.setattr(FashionMNIST, "mirrors", [mirror])
    monkeypatch.setattr(FashionMNIST, "resources", [(f"{name}.gz", file_md5(tiny_raw / f"{name}.gz"))
                                                    for name in RAW_FILES.values()])
    raw = fetch_raw(None, tmp_path)
    assert list(raw) == list(RAW_FILES.values())
    for name, data in raw.items():
        assert bytes(data) == gzip.decompress((tiny_raw / f"{name}.gz").read_bytes())


def test_a_downloaded_file_with_the_right_md5_sum_that_does_not_parse_is_named(tmp_path, tiny_raw, mirror,
                                                                              monkeypatch):
    from torchvision.datasets import FashionMNIST

    damaged = tiny_raw / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(gzip.compress(idx_bytes(synthetic(5, 0)[0], 2051)))  # images where labels should be
    monkeypatch.setattr(FashionMNIST, "mirrors", [mirror])
    monkeypatch.setattr(FashionMNIST, "resources", [(f"{name}.gz", file_md5(tiny_raw / f"{name}.gz"))
                                                    for name in RAW_FILES.values()])
    with pytest.raises(DataError, match=r"^t10k-labels-idx1-ubyte: wrong magic number 2051"):
        fetch_raw(None, tmp_path)
