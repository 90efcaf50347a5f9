"""fmnist/core/io.py: writes are whole or absent; a failed write keeps the previous file; a
damaged torch file is a DataError (the bounds themselves: test_limits.py)."""

from __future__ import annotations

import io
import resource
import zipfile

import pytest
import torch

from helpers.damage import file_size_limit
from fmnist.core.errors import DataError, OutputError
from fmnist.core.io import torch_bytes, torch_from_bytes, write_bytes, write_folder


def test_a_write_past_the_file_size_limit_keeps_the_previous_file(tmp_path):
    target, folder = tmp_path / "model.pt", tmp_path / "prepared"
    target.write_bytes(b"previous")
    write_folder(folder, {"a.pt": b"a", "b.pt": b"b"})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    file_size_limit(1000)()
    try:
        with pytest.raises(OutputError) as err:
            write_bytes(target, b"x" * 5000)
        with pytest.raises(OutputError) as folder_err:
            write_folder(folder, {"a.pt": b"new", "b.pt": b"x" * 5000})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(err.value) == f"{target}: could not write it (File too large); the previous one is unchanged"
    assert str(folder_err.value) == f"{folder / 'b.pt'}: could not write it (File too large); the previous one is unchanged"
    assert target.read_bytes() == b"previous"
    assert (folder / "a.pt").read_bytes() == b"a" and (folder / "b.pt").read_bytes() == b"b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "prepared"]  # no temporary left


def test_a_zip_entry_of_a_version_zipfile_cant_read_is_left_to_torch_load():
    """Found by fuzzing (fuzz/corpus/splits/crash-zip-version): zipfile raises NotImplementedError
    for a directory entry that asks for a later zip version, which the check of declared sizes
    let through; torch reads such a file, and a damaged one is a DataError."""
    data = bytearray(torch_bytes({"images": 1}))
    entry = data.index(b"PK\x01\x02")
    data[entry + 6] = 114  # version needed to extract: 11.4
    assert torch_from_bytes(bytes(data), "x.pt", "hint", limit=1 << 20) == {"images": 1}
    with pytest.raises(DataError, match=r"^x.pt: not a readable torch file, truncated or damaged \(.*\); hint$"):
        torch_from_bytes(bytes(data[:entry + 20]), "x.pt", "hint", limit=1 << 20)


def test_a_damaged_torch_files_message_is_one_printable_line():
    """Found by fuzzing (fuzz/corpus/model/crash-bell-in-record-name.pkl): torch names the record
    it can't find, and a record name is whatever bytes the file holds, an ESC or a bell included."""
    source = zipfile.ZipFile(io.BytesIO(torch_bytes({"weights": torch.zeros(3)})))
    records = {info.filename: source.read(info) for info in source.infolist()}
    records["archive/data.pkl"] = records["archive/data.pkl"].replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00\x1b")
    damaged = io.BytesIO()
    with zipfile.ZipFile(damaged, "w") as archive:
        for name, record in records.items():
            archive.writestr(name, record)
    with pytest.raises(DataError) as err:
        torch_from_bytes(damaged.getvalue(), "x.pt", "hint")
    assert "locating file data/\\x1b" in str(err.value) and str(err.value).isprintable(), err.value
