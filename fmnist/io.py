"""Files whole or not at all: atomic writes, checked reads, torch (de)serialisation.

    write_json(Path("metrics/eval.json"), summary)   # temp file + rename: whole or absent
    save_torch(Path("models/model.pt"), {...})
    obj = load_torch(Path("models/model.pt"), hint="run the train stage first (dvc repro)")

Writing: everything goes to a temporary file beside its target and is renamed into
place, so a stage killed at any moment, or a full disk, leaves the previous output or
none; a failed write raises OutputError naming the file and the cause.
Reading: a missing, unreadable or damaged file raises DataError naming the file, what is
wrong and, in `hint`, what to do. torch files are loaded with weights_only: no code runs
from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from fmnist.errors import DataError, OutputError, one_line, reason


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

def read_bytes(path: Path, hint: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: missing; {hint}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({reason(exc)}); {hint}") from None


def torch_from_bytes(data: bytes, name: str, hint: str) -> Any:
    """torch.load of a file's bytes with weights_only (no code runs from them); any damage is a DataError."""
    if not data:
        raise DataError(f"{name}: the file is empty; {hint}")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch reports damage with many exception types
        if not data.startswith(b"PK\x03\x04"):  # what torch.save writes: a zip archive
            raise DataError(f"{name}: not a torch file (it doesn't start like one); {hint}") from None
        raise DataError(f"{name}: not a readable torch file, truncated or damaged ({one_line(exc)}); {hint}") from None


def load_torch(path: Path, hint: str) -> Any:
    """A torch file, read and loaded with torch_from_bytes."""
    return torch_from_bytes(read_bytes(path, hint), str(path), hint)
