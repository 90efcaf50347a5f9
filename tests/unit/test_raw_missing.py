"""A FASHION_MNIST_DIR that lacks raw files names every missing one in one line."""

from __future__ import annotations

import pytest

from fmnist.core.errors import DataError
from fmnist.raw import RAW_ENV, fetch_raw
from helpers.data import write_raw


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
