"""Things that are not files, put where a file is expected, and a pipe something writes to.

    path = make_not_file(tmp_path / "model.pt", "fifo")     # a named pipe nobody writes to
    with pytest.raises(DataError, match=refusal(path, "fifo")):
        read_model_bytes(path)
    with fed_pipe(tmp_path / "x", b"data") as fifo: ...      # a named pipe a writer holds open

Tests that read them take the `no_hang` fixture (tests/conftest.py), or run the command
with a timeout: a regression that waits on a pipe then fails instead of hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

# Each kind of thing that is not a file, and what the one line refusing it says it is.
NOT_FILES = {
    "fifo": "a named pipe (FIFO) with no writer",
    "socket": "a socket",
    "device": "a character device (/dev/zero)",
    "null": "a character device (/dev/null)",
    "folder": "a folder",
    "loop": "a loop of symbolic links",
}


def make_not_file(path: Path, kind: str) -> Path:
    """Put a thing of `kind` (a key of NOT_FILES) at `path`; `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        # Bound by a relative name: a socket's path is at most 108 bytes, and tmp_path's are long.
        here = os.getcwd()
        os.chdir(path.parent)
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path.name)  # the file stays after the socket is closed
        finally:
            os.chdir(here)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "null":
        path.symlink_to("/dev/null")
    elif kind == "folder":
        path.mkdir()
        (path / "inside").write_bytes(b"a folder's content")
    elif kind == "loop":
        other = path.with_name(path.name + ".other")
        path.symlink_to(other.name)
        other.symlink_to(path.name)
    else:
        raise ValueError(kind)
    return path


def refusal(path: Path | str, kind: str) -> str:
    """The start of the one line that refuses `path`, as a regular expression for pytest.raises."""
    return "^" + re.escape(f"{path}: {NOT_FILES[kind]}, not a file")


@contextlib.contextmanager
def fed_pipe(path: Path, first: bytes, then: bytes = b"") -> Iterator[Path]:
    """A named pipe at `path` whose writer is there before anyone reads: it sends `first`,
    then `then` over and over for as long as someone reads (nothing more if `then` is
    empty), and stops when the pipe has no reader left.

    The writer opens the pipe before the block starts (a reader is held open meanwhile, so
    that neither open waits), which makes the test deterministic: a reader never finds the
    pipe without its writer."""
    os.mkfifo(path)
    holder = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.set_blocking(writer, True)

    def send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(writer, view):]

    def feed() -> None:
        try:
            send(first)
            while then:
                send(then)
        except OSError:  # BrokenPipeError: the last reader went away
            pass
        finally:
            os.close(writer)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        os.close(holder)  # no reader left: a write blocked on the full pipe fails, and the writer stops
        thread.join(timeout=60)
        assert not thread.is_alive(), "the pipe's writer did not stop"
