"""fmnist/core/io.py: writes are whole or absent; a failed write keeps the previous file; a
damaged torch file is a DataError (the bounds themselves: test_limits.py)."""

from __future__ import annotations

import io
import pickle
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


def _pickled_dict_keyed_by(key: tuple) -> bytes:
    """A torch file of {key: 1}, written without hashing `key` (torch.save would)."""
    data = bytearray(pickle.dumps([key, 1], protocol=2))
    data[2:3], data[-2:-1] = b"}", b"u"  # EMPTY_LIST ... APPENDS becomes EMPTY_DICT ... SETITEMS
    source = zipfile.ZipFile(io.BytesIO(torch_bytes({})))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info in source.infolist():
            archive.writestr(info.filename, bytes(data) if info.filename.endswith("data.pkl") else source.read(info))
    return out.getvalue()


def test_a_pickle_whose_tuples_share_parts_is_refused_before_loading():
    """Found while fuzzing (fuzz/corpus/model/damaged-hash-bomb.pkl): 200 bytes of pickle build a tuple of
    2^40 parts, each level two copies of the one below (the memo shares them); torch.load hashes a dict's
    keys, and hashing a tuple walks every part, for hours. Here 2^22 parts, past the bound of a million."""
    key = ()
    for _ in range(21):
        key = (key, key)
    with pytest.raises(DataError, match=r"x.pt: its pickle builds a tuple of 4,194,303 parts from shared ones"):
        torch_from_bytes(_pickled_dict_keyed_by(key), "x.pt", "hint")
    assert torch_from_bytes(_pickled_dict_keyed_by(((1, 2), (3, 4))), "x.pt", "hint") == {((1, 2), (3, 4)): 1}


def test_only_what_torch_save_writes_is_loaded():
    """A torch file of the legacy format (before zip archives) is a pickle torch.load reads
    without the zip around it: no file of this project is one."""
    legacy = io.BytesIO()
    torch.save({"a": 1}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(DataError, match=r"x.pt: not a torch file \(it doesn't start like one\); hint"):
        torch_from_bytes(legacy.getvalue(), "x.pt", "hint")


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
