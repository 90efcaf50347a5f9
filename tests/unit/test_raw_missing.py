"""A FASHION_MNIST_DIR that lacks raw files names every missing one in one line; one that
holds something other than a file where one should be (a named pipe, a device, a folder,
a socket, a loop of links) names it and what it is at once, and nothing waits on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fmnist.core.errors import DataError
from fmnist.raw import RAW_ENV, fetch_raw
from helpers import ROOT
from helpers.data import write_raw
from helpers.not_files import NOT_FILES, make_not_file


def test_every_missing_raw_file_is_named_at_once(tmp_path):
    folder = write_raw(tmp_path / "raw", n_train=20, n_test=10)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as caught:
        fetch_raw(str(folder), tmp_path)
    message = str(caught.value)
    assert message == (f"train-labels-idx1-ubyte, t10k-images-idx3-ubyte: missing from {RAW_ENV}={folder} "
                       f"(neither NAME nor NAME.gz is there)")


def test_a_folder_with_all_four_files_gzipped_or_not_is_read(tmp_path):
    folder = write_raw(tmp_path / "raw", n_train=20, n_test=10)
    plain = write_raw(tmp_path / "plain", n_train=20, n_test=10, gz=False)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    (plain / "t10k-labels-idx1-ubyte").rename(folder / "t10k-labels-idx1-ubyte")  # one file not gzipped
    assert len(fetch_raw(str(folder), tmp_path)) == 4


@pytest.mark.parametrize("kind", NOT_FILES)
def test_a_raw_file_that_is_not_a_file_is_refused_at_once_by_name(kind, tmp_path, no_hang):
    folder = write_raw(tmp_path / "raw", n_train=20, n_test=10)
    path = folder / "train-labels-idx1-ubyte.gz"
    path.unlink()
    make_not_file(path, kind)
    with pytest.raises(DataError) as caught:
        fetch_raw(str(folder), tmp_path)
    assert str(caught.value) == f"{path}: {NOT_FILES[kind]}, not a file; check {RAW_ENV}={folder}"


@pytest.mark.parametrize("kind", ["fifo", "device", "loop", "file"])
def test_a_fashion_mnist_dir_that_is_not_a_folder_says_what_it_is(kind, tmp_path, no_hang):
    path = tmp_path / "raw"
    if kind == "file":
        path.write_bytes(b"")
    else:
        make_not_file(path, kind)
    found = {"fifo": "a named pipe (FIFO)", "device": "a character device (/dev/zero)",
             "loop": "a loop of symbolic links", "file": "a file"}[kind]
    with pytest.raises(DataError) as caught:
        fetch_raw(str(path), tmp_path)
    assert str(caught.value) == (f"{RAW_ENV}={path}: {found}, not a folder; point it at a folder holding the four "
                                 f"IDX files")


def test_the_download_stage_refuses_a_named_pipe_in_fashion_mnist_dir_and_writes_nothing(tmp_path):
    """The issue's case: the stage waited forever on the pipe. Now: one line, exit 1, no output."""
    folder = write_raw(tmp_path / "raw", n_train=20, n_test=10)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    fifo = make_not_file(folder / "t10k-images-idx3-ubyte", "fifo")
    proc = subprocess.run([sys.executable, str(ROOT / "stages/download.py"), str(tmp_path / "out")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT), RAW_ENV: str(folder)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {fifo}: a named pipe (FIFO) with no writer, not a file; check {RAW_ENV}={folder}"], proc.stderr
    assert not (tmp_path / "out").exists()
