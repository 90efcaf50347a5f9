"""fmnist/core/io.py: writes are whole or absent; a failed write keeps the previous file; what
is not a file is refused before it is read, and nothing waits on a pipe with no writer; a
damaged torch file is a DataError (the bounds themselves: test_limits.py)."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import resource
import stat
import sys
import zipfile

import pytest
import torch

from fmnist.core.errors import DataError, OutputError
from fmnist.core.io import (
    check_input,
    open_bounded,
    read_bytes,
    read_text_bounded,
    torch_bytes,
    torch_from_bytes,
    what_is,
    write_bytes,
    write_folder,
)
from helpers.damage import file_size_limit
from helpers.not_files import NOT_FILES, fed_pipe, make_not_file


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


# --- what is not a file: refused unopened or unread, in one line, and nothing waits ------------

@pytest.mark.parametrize("kind", NOT_FILES)
@pytest.mark.parametrize("reader", ["read_bytes", "open_bounded", "read_text_bounded"])
def test_what_is_not_a_file_is_refused_at_once_by_name_saying_what_it_is(kind, reader, tmp_path, no_hang,
                                                                          monkeypatch):
    path = make_not_file(tmp_path / "data.bin", kind)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    read = {"read_bytes": lambda: read_bytes(path, "the hint", 100),
            "open_bounded": lambda: open_bounded(path, "the hint", 100).__enter__(),
            "read_text_bounded": lambda: read_text_bounded(path, 100, "a text", "the hint")}[reader]
    with pytest.raises(DataError) as err:
        read()
    assert str(err.value) == f"{path}: {NOT_FILES[kind]}, not a file; the hint"
    # Only a named pipe is opened (without waiting), to learn that it has no writer.
    assert opened == ([str(path)] if kind == "fifo" else [])


def test_check_input_says_what_a_path_is_before_anything_opens_it(tmp_path, no_hang):
    assert check_input(tmp_path / "new.db", missing_ok=True) is None
    with pytest.raises(DataError, match=f"^{tmp_path / 'new.db'}: missing; create it$"):
        check_input(tmp_path / "new.db", "create it")
    fifo = make_not_file(tmp_path / "fifo", "fifo")
    assert stat.S_ISFIFO(check_input(fifo).st_mode)  # open_input then asks it for a writer
    with pytest.raises(DataError, match=f"^{fifo}: a named pipe \\(FIFO\\), not a file$"):
        check_input(fifo, pipes=False)
    broken = tmp_path / "broken"
    broken.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DataError, match=f"^{broken}: a symbolic link to {tmp_path / 'nowhere'}, which is missing; h$"):
        check_input(broken, "h", missing_ok=True)  # a link to nothing is not "nothing there yet"
    assert what_is(tmp_path) == "a folder"
    assert what_is(broken) == f"a symbolic link to {tmp_path / 'nowhere'}, which is missing"
    assert what_is("/dev/null") == "a character device" and what_is(tmp_path / "none") == "missing"


def test_a_named_pipe_with_a_writer_is_read_as_it_comes_and_bounded(tmp_path, no_hang):
    with fed_pipe(tmp_path / "short", b"all of it") as fifo:
        assert read_bytes(fifo, "h", 100) == b"all of it"
    endless = tmp_path / "endless"
    with fed_pipe(endless, b"", bytes(4096)), pytest.raises(
            DataError, match=f"^{endless}: more than 100,000 bytes, larger than a text can be "
                             r"\(the limit is 100,000 bytes\); h$"):
        read_bytes(endless, "h", 100_000, "a text")


def test_a_pipe_named_on_purpose_is_read_even_when_empty_and_bounded(no_hang):
    for data, limit in ((b"from a pipe", 100), (b"", 100), (bytes(5000), 4000)):
        reader, writer = os.pipe()
        try:
            os.write(writer, data)
            os.close(writer)
            name = f"/dev/fd/{reader}"  # what bash's <(...) passes
            if len(data) > limit:
                with pytest.raises(DataError, match=f"^{name}: more than 4,000 bytes"):
                    read_bytes(name, "h", limit)
            else:
                assert read_bytes(name, "h", limit) == data
        finally:
            os.close(reader)


# Where standard input leads, as the refusal says it (macOS's /dev/fd names no target).
NULL = "a character device (/dev/null)" if sys.platform == "linux" else "a character device"


@pytest.mark.parametrize("given, expected", [
    (b"a picture", b"a picture"),
    (b"more than ten bytes", "-: more than 10 bytes, larger than such a file can be (the limit is 10 bytes); h"),
    ("file", b"a file"),
    ("file of 11 bytes", "-: 11 bytes, larger than such a file can be (the limit is 10 bytes); h"),
    ("/dev/null", f"-: standard input is {NULL}, not a file; h"),
    ("terminal", "-: standard input is a terminal, not a file; redirect or pipe one in; h"),
    ("closed", "-: standard input is closed; h"),
])
def test_dash_is_standard_input_read_whole_and_bounded(given, expected, tmp_path, monkeypatch, no_hang):
    """`-` reads what sys.stdin's descriptor holds (a pipe, a file redirected in), never a terminal or a device."""
    with contextlib.ExitStack() as stack:
        if isinstance(given, bytes):
            reader, writer = os.pipe()
            os.write(writer, given)
            os.close(writer)
            stdin = stack.enter_context(open(reader, "rb"))
        elif given.startswith("file"):
            (tmp_path / "f").write_bytes(b"a file" if given == "file" else b"eleven byte")
            stdin = stack.enter_context(open(tmp_path / "f", "rb"))
        elif given == "terminal":
            leader, follower = os.openpty()
            stack.callback(os.close, leader)
            stdin = stack.enter_context(open(follower, "rb"))
        else:
            stdin = None if given == "closed" else stack.enter_context(open(given, "rb"))
        monkeypatch.setattr(sys, "stdin", stdin)
        if isinstance(expected, bytes):
            assert read_bytes("-", "h", 10) == expected
        else:
            with pytest.raises(DataError) as err:
                read_bytes("-", "h", 10)
            assert str(err.value) == expected
        assert stdin is None or not stdin.closed  # standard input itself stays open


def test_read_text_bounded_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"train:\n  lr: 0.1\xff\n")
    with pytest.raises(DataError, match=f"^{path}: not UTF-8 text \\(byte 16 is 0xff\\); restore it$"):
        read_text_bounded(path, 1000, "a params file", "restore it")
    path.write_text("train:\n  lr: 0.1\n")
    assert read_text_bounded(path, 1000, "a params file") == "train:\n  lr: 0.1\n"

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
