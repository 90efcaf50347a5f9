"""Files whole or not at all: atomic writes, checked reads, torch (de)serialisation.

    write_json(Path("metrics/eval.json"), summary)   # temp file + rename: whole or absent
    save_torch(Path("models/model.pt"), {...})
    obj = load_torch(Path("models/model.pt"), hint="run the train stage first (dvc repro)")

Writing: everything goes to a temporary file beside its target and is renamed into
place, so a stage killed at any moment, or a full disk, leaves the previous output or
none; a failed write raises OutputError naming the file and the cause.
Reading: a missing, unreadable or damaged file raises DataError naming the file, what is
wrong and, in `hint`, what to do. Every read is bounded: `read_bytes(path, hint, limit)`
and `open_bounded(path, hint, limit)` (a stream, for decoders that read as they go) refuse
a file as soon as it holds more than `limit` bytes, before the rest is read, so a huge
file or a pipe fed forever costs one line, not the machine's memory. torch
files are loaded with weights_only (no code runs from them), after their records'
declared sizes are checked against the same limit (torch.load would inflate a
compressed record to whatever size it declares).

What a path is, is checked before it is opened (`check_input`; every read above does it):
a folder, a socket, a device (/dev/zero linked as a picture), a loop of symbolic links or
a named pipe (FIFO) with no writer is refused at once, in one line naming the path and
what it is, and nothing waits on it. A pipe is read when something writes to it: `-`
(standard input, as Unix tools read it), /dev/stdin, /dev/fd/N (what the shell's
`<(curl ...)` passes) or a FIFO a writer holds open, bounded as a file is.

    text = read_text_bounded(Path("params.yaml"), 1 << 20, "a params file", "restore it with git checkout")
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickletools
import re
import shutil
import stat
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from fmnist.core.errors import DataError, OutputError, one_line, reason


def md5_hex(data: bytes) -> str:
    """The hash DVC records for a file in dvc.lock (`md5:`)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --- writing ----------------------------------------------------------------

def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def writing(path: str | Path, unchanged: bool = False) -> Iterator[None]:
    """Turn an OSError while writing `path` (no space, file too large, read-only folder)
    into an OutputError naming it and the cause; a write() that fails on a full disk
    names no file by itself. `unchanged`: the write was atomic, say what is left."""
    path = Path(path)
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        left = ("; the previous one is unchanged" if path.exists() else "; nothing was written") if unchanged else ""
        raise OutputError(f"{path}: could not write it ({reason(exc)}){left}") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success, move it into place in one rename.

    An OSError on the way (no space, file too large, read-only folder) becomes an
    OutputError naming `path` and the cause; `path` itself is then untouched.
    """
    path = Path(path)
    # A fixed name: what a killed run left behind is cleared by the next one.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path, unchanged=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
            yield tmp
            if tmp.is_file():
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)  # rename() can't replace a folder with a file, nor a non-empty one
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            _remove(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def torch_bytes(obj: Any) -> bytes:
    """torch.save into memory: a failing disk then surfaces as a plain OSError on write."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch(path: str | Path, obj: Any) -> None:
    write_bytes(path, torch_bytes(obj))


def figure_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes, rendered in memory."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def save_figure(path: str | Path, fig) -> None:
    write_bytes(path, figure_bytes(fig))


def save_csv(path: str | Path, table) -> None:
    write_text(path, table.to_csv(index=False))


def write_folder(path: str | Path, files: dict[str, bytes]) -> None:
    """Write a whole folder of files at once: the previous folder stays until all are written."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name, data in files.items():
            with writing(path / name, unchanged=True):  # name the file that didn't fit
                (tmp / name).write_bytes(data)


# --- reading ----------------------------------------------------------------

def size_text(n: int) -> str:
    """A byte count for a message: 1,234,567 bytes (1.2 MB)."""
    return f"{n:,} bytes" + (f" ({n / 1e6:,.1f} MB)" if n >= 1e6 else "")


def _too_long(name: str, limit: int, what: str, hint: str, size: int | None = None) -> DataError:
    held = f"{size_text(size)}" if size is not None else f"more than {size_text(limit)}"
    return DataError(f"{name}: {held}, larger than {what} can be (the limit is {size_text(limit)}); {hint}")


class _Bounded(io.RawIOBase):
    """A binary stream that raises DataError once more than `limit` bytes are read from it
    (counted from the start of the file: reading byte `limit` + 1 is the failure)."""

    def __init__(self, raw: BinaryIO, name: str, limit: int, what: str, hint: str):
        super().__init__()
        self._raw, self._name, self._limit, self._what, self._hint = raw, name, limit, what, hint
        self._seekable = raw.seekable()
        self._pos = 0  # bytes read so far on a stream that can't seek

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if not self._seekable:
            raise io.UnsupportedOperation("seek")
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell() if self._seekable else self._pos

    def readinto(self, buffer) -> int:
        pos = self.tell()
        # Never more than one byte past the limit: that byte alone says the file is too long.
        want = max(0, min(len(buffer), self._limit + 1 - pos))
        with memoryview(buffer) as view:
            got = self._raw.readinto(view[:want]) if want else 0
        got = got or 0
        self._pos += got
        if pos + got > self._limit:
            raise _too_long(self._name, self._limit, self._what, self._hint)
        return got

    def close(self) -> None:
        self._raw.close()
        super().close()


# --- what a path is: checked before it is opened ----------------------------------

STDIN = "-"  # the path of standard input, as Unix tools take it
# Paths that name a stream on purpose: standard input, or a descriptor the shell opened
# (`<(curl ...)` passes /dev/fd/63). A pipe behind one is read as `cat` reads it.
_ON_PURPOSE = re.compile(r"/dev/(stdin|fd/\d+)|/proc/(self|thread-self|\d+)/fd/\d+")
_PROBE = 1 << 16  # bytes a named pipe is asked for, without waiting, to learn whether it has a writer


def _with(hint: str) -> str:
    return f"; {hint}" if hint else ""


def _kind(path: str | Path, mode: int) -> str:
    """What a file that is not a regular one is, in a few words (a device: where it leads)."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    kind = next((kind for test, kind in kinds if test(mode)), None)
    if kind is None:
        return "not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        target = os.path.realpath(path)
        if target != os.path.abspath(path):
            kind += f" ({target})"
    return kind


def what_is(path: str | Path) -> str:
    """`path` in a few words, without opening it: "a file", "missing", "a folder", "a named
    pipe (FIFO)", "a socket", "a character device (/dev/zero)", "a block device", "a loop
    of symbolic links", "a symbolic link to X, which is missing"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        try:
            return f"a symbolic link to {os.readlink(path)}, which is missing"
        except OSError:
            return "missing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        return f"not readable ({reason(exc)})"
    return "a file" if stat.S_ISREG(mode) else _kind(path, mode)


def not_a_file(name: str | Path, kind: str, hint: str = "") -> DataError:
    """The one line that refuses something that is not a file: `NAME: KIND, not a file; HINT`."""
    return DataError(f"{name}: {kind}, not a file{_with(hint)}")


def check_input(path: str | Path, hint: str = "", *, missing_ok: bool = False,
                pipes: bool = True) -> os.stat_result | None:
    """os.stat of a path read from outside, before anything opens it: a regular file, or
    (with `pipes`) a named pipe, whose writer open_input checks for. Anything else raises
    DataError at once, in one line naming it and saying what it is: a folder, a socket, a
    device, a loop of symbolic links, a link to nothing, a missing file (None with
    `missing_ok`: the caller creates it). Nothing is opened, so nothing can block."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path}: {what_is(path)}{_with(hint)}") from None
        if missing_ok:
            return None
        raise DataError(f"{path}: missing{_with(hint)}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise not_a_file(path, "a loop of symbolic links", hint) from None
        raise DataError(f"{path}: cannot be read ({reason(exc)}){_with(hint)}") from None
    if stat.S_ISREG(info.st_mode) or (pipes and stat.S_ISFIFO(info.st_mode)):
        return info
    raise not_a_file(path, _kind(path, info.st_mode), hint)


class _Prefixed(io.RawIOBase):
    """A pipe whose first bytes were already read (to learn it had a writer): those, then the rest."""

    def __init__(self, raw: io.FileIO, first: bytes):
        super().__init__()
        self._raw, self._first = raw, first

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer) -> int:
        if not self._first:
            return self._raw.readinto(buffer)
        n = min(len(buffer), len(self._first))
        buffer[:n] = self._first[:n]
        self._first = self._first[n:]
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_stdin(hint: str) -> BinaryIO:
    """Standard input (`-`) as a stream of its own (closing it leaves standard input open): a
    pipe, a socket or a file redirected in; a terminal or a device is refused."""
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):  # None, closed, or no descriptor at all
        raise DataError(f"{STDIN}: standard input is closed{_with(hint)}") from None
    if stat.S_ISCHR(mode) and os.isatty(fd):
        raise DataError(f"{STDIN}: standard input is a terminal, not a file; redirect or pipe one in{_with(hint)}")
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        raise DataError(f"{STDIN}: standard input is {_kind(f'/dev/fd/{fd}', mode)}, not a file{_with(hint)}")
    return io.FileIO(os.dup(fd), "rb", closefd=True)


def open_input(path: str | Path, hint: str) -> BinaryIO:
    """`path` (or standard input for `-`) opened for reading, unbuffered, once check_input
    says it is a file or a pipe; DataError naming it otherwise.

    Nothing here waits on a pipe with nobody at the other end: the path is opened with
    O_NONBLOCK (a named pipe's open would wait for a writer), checked again on the
    descriptor (it may have changed since the check), and a pipe is asked for its first
    bytes without waiting. A named pipe that says end-of-file then has no writer and is
    refused; one whose writer holds it open, and a pipe named on purpose (/dev/stdin,
    /dev/fd/N), are read as they come, as `cat` reads them.
    """
    name = str(path)
    if name == STDIN:
        return _open_stdin(hint)
    check_input(path, hint)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise DataError(f"{name}: missing{_with(hint)}") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # became a loop, or a socket, since the check
            raise not_a_file(name, what_is(path), hint) from None
        raise DataError(f"{name}: cannot be read ({reason(exc)}){_with(hint)}") from None
    try:
        mode = os.fstat(fd).st_mode
        first = b""
        if stat.S_ISFIFO(mode):
            try:
                first = os.read(fd, _PROBE)
            except BlockingIOError:
                pass  # a writer holds it open and has sent nothing yet: wait for it, as cat does
            else:
                if not first and not _ON_PURPOSE.fullmatch(name):
                    raise not_a_file(name, "a named pipe (FIFO) with no writer", hint)
        elif not stat.S_ISREG(mode):  # swapped for something else since the check
            raise not_a_file(name, _kind(path, mode), hint)
        os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise
    return _Prefixed(raw, first) if first else raw


@contextlib.contextmanager
def open_bounded(path: str | Path, hint: str, limit: int, what: str = "such a file") -> Iterator[BinaryIO]:
    """`path` opened as a buffered binary stream that raises DataError, naming the file,
    `what` it should be and `limit`, as soon as it yields more than `limit` bytes; a
    regular file whose size already says so is refused before any byte is read.

    `path` is opened with open_input: `-` is standard input; a folder, a device, a socket,
    a loop of symbolic links or a named pipe with no writer is refused unopened or unread.
    A pipe is stopped at limit + 1 bytes. Any other OSError while reading is a DataError
    naming the file too.
    """
    raw = open_input(path, hint)
    try:
        info = os.fstat(raw.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise _too_long(str(path), limit, what, hint, size=info.st_size)
        with io.BufferedReader(_Bounded(raw, str(path), limit, what, hint)) as stream:
            try:
                yield stream
            except DataError:
                raise
            except OSError as exc:
                raise DataError(f"{path}: cannot be read ({reason(exc)}); {hint}") from None
    finally:
        raw.close()


def read_stream(stream: BinaryIO, name: str, hint: str, limit: int, what: str = "such a file") -> bytes:
    """All of `stream`, or DataError naming `name` once it holds more than `limit` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _too_long(name, limit, what, hint)
    return data


def read_bytes(path: str | Path, hint: str, limit: int, what: str = "such a file") -> bytes:
    """The whole file, at most `limit` bytes of it: a longer one is refused (see open_bounded)."""
    with open_bounded(path, hint, limit, what) as stream:
        return read_stream(stream, str(path), hint, limit, what)


def read_text_bounded(path: str | Path, limit: int, what: str, hint: str = "") -> str:
    """A UTF-8 text file read whole (read_bytes: checked, at most `limit` bytes), e.g.

        read_text_bounded(Path("params.yaml"), 1 << 20, "a params file", "restore it with `git checkout params.yaml`")

    DataError, in one line naming the file, for anything that is not such a file: missing,
    a folder, a pipe with no writer, a device, longer than `limit`, not UTF-8."""
    data = read_bytes(path, hint, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}){_with(hint)}") from None


def torch_from_bytes(data: bytes, name: str, hint: str, limit: int | None = None,
                     what: str = "such a file") -> Any:
    """torch.load of a file's bytes with weights_only (no code runs from them); any damage is a DataError.

    With `limit`, the records the file's zip directory declares must add up to at most
    `limit` bytes: torch.load inflates a compressed record to its declared size, so a few
    kilobytes could otherwise ask for gigabytes.
    """
    if not data:
        raise DataError(f"{name}: the file is empty; {hint}")
    if not data.startswith(b"PK\x03\x04"):  # what torch.save writes: a zip archive (no legacy format)
        raise DataError(f"{name}: not a torch file (it doesn't start like one); {hint}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        declared = sum(entry.file_size for entry in archive.infolist())
    except Exception:  # noqa: BLE001 - zipfile reports damage with many types (NotImplementedError too)
        archive, declared = None, 0  # not a readable zip: torch.load says so below
    if limit is not None and declared > limit:
        raise DataError(f"{name}: its records declare {size_text(declared)}, more than {what} can hold "
                        f"(the limit is {size_text(limit)}); {hint}")
    parts = _largest_tuple(archive) if archive is not None else 0
    if parts > MAX_TUPLE_PARTS:
        raise DataError(f"{name}: its pickle builds a tuple of {parts:,} parts from shared ones, which loading "
                        f"would hash for hours: not a file this project writes; {hint}")
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch reports damage with many exception types
        raise DataError(f"{name}: not a readable torch file, truncated or damaged ({one_line(exc)}); {hint}") from None
    wide = _wider_than_its_data(obj)
    if wide is not None:
        raise DataError(f"{name}: holds a tensor of {wide} that the file doesn't hold the values of "
                        f"(a view repeating them, or not a plain tensor): not a file this project writes; {hint}")
    return obj


# A tuple a legitimate torch file's pickle builds has a few parts (a size, a stride, the
# arguments that rebuild a tensor); hashing one of a million takes milliseconds.
MAX_TUPLE_PARTS = 1_000_000


def _largest_tuple(archive: zipfile.ZipFile) -> int:
    """The most parts (counted as a tree: a tuple shared twice counts twice) of any tuple the
    archive's pickle builds, found by following its opcodes without running them.

    A pickle can build a tuple of two copies of the previous one forty times over in 200
    bytes (its memo shares them); a dict keyed by it is hashed while loading, and Python
    hashes a tuple by walking every part: 2^40 of them. The count stops being exact where
    it can't follow (any other object is counted as the sum of what built it)."""
    largest = 0
    for name in (n for n in archive.namelist() if n.endswith("data.pkl")):
        stack: list[int] = []
        marks: list[int] = []
        memo: dict[int, int] = {}
        try:
            for op, arg, _ in pickletools.genops(archive.read(name)):
                if op.name == "MARK":
                    marks.append(len(stack))
                    continue
                if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = stack[-1]
                    continue
                if op.name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
                    stack.append(memo[arg] if op.name != "DUP" else stack[-1])
                    continue
                before, after = op.stack_before, op.stack_after
                start = len(stack) - len(before)
                if pickletools.markobject in before:  # it takes everything since the last MARK
                    start = marks.pop() - before.index(pickletools.markobject)
                popped = stack[start:]
                del stack[start:]
                builds = op.name.startswith("TUPLE") or op.name in ("REDUCE", "NEWOBJ", "BUILD")
                built = 1 + sum(popped) if builds else 1
                stack.extend([built] * len(after))
                largest = max(largest, built)
        except Exception:  # noqa: BLE001, S112 - a pickle it can't follow: torch.load reports it
            continue
    return largest


def _wider_than_its_data(obj: Any) -> str | None:
    """The shape of a tensor in `obj` (dicts, lists, tuples) with more values than its storage,
    or of a kind other than a plain dense tensor; None when there is none.

    A pickle can rebuild a tensor of any size and stride on a storage of one value (stride
    0): a few bytes that read as a billion images, whose checks, copies and comparisons
    then cost what the file never held. Every container is looked at once (the pickle's
    memo can share one among many places)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            try:
                plain = item.layout == torch.strided and (item.numel() == 0 or item.numel() * item.element_size()
                                                          <= item.untyped_storage().nbytes()
                                                          - item.storage_offset() * item.element_size())
            except Exception:  # noqa: BLE001 - a sparse or otherwise unusual tensor has no such storage
                plain = False
            if not plain:
                return f"{tuple(item.shape)}"[:80]
        elif isinstance(item, (dict, list, tuple, set, frozenset)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
    return None


def load_torch(path: Path, hint: str, limit: int, what: str = "such a file") -> Any:
    """A torch file of at most `limit` bytes, read and loaded with torch_from_bytes."""
    return torch_from_bytes(read_bytes(path, hint, limit, what), str(path), hint, limit, what)
