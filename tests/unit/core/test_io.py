"""fmnist/core/io.py: writes are whole or absent; a failed write keeps the previous file."""

from __future__ import annotations

import resource

import pytest

from fmnist.core.errors import OutputError
from fmnist.core.io import write_bytes, write_folder
from helpers.damage import file_size_limit


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
    assert str(folder_err.value) == (f"{folder / 'b.pt'}: could not write it (File too large); "
                                     f"the previous one is unchanged")
    assert target.read_bytes() == b"previous"
    assert (folder / "a.pt").read_bytes() == b"a" and (folder / "b.pt").read_bytes() == b"b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "prepared"]  # no temporary left
