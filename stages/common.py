"""File I/O shared by the stage scripts: params, atomic writes, error reporting.

Not a stage itself. Every output goes through `atomic_path` (write to a temporary name
in the same folder, then rename), so a stage killed at any moment leaves either the
previous complete file or none, never half of one for DVC to cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import yaml

from fmnist.errors import ParamError, PipelineError
from fmnist.params import check_params

PARAMS_FILE = "params.yaml"


def load_params(path: str = PARAMS_FILE) -> dict:
    """Read and check the whole params file; raise ParamError listing every problem."""
    try:
        with open(path) as f:
            params = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found; run from the repository's top folder") from None
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML: {exc}") from None
    errors = check_params(params)
    if errors:
        raise ParamError(f"{path} has {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    return params


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success, move it into place in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed name: what a killed run left behind is cleared by the next one.
    tmp = path.with_name(f".{path.name}.tmp")
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if tmp.is_dir() and path.is_dir():
            shutil.rmtree(path)  # rename() can't replace a non-empty folder
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir_entries(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success, move each entry of it into `folder`, whole.

    For folders that hold files the stage doesn't own (DVC keeps a .gitignore in some),
    so the folder itself can't be swapped.
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        folder.mkdir(exist_ok=True)
        for entry in sorted(tmp.iterdir()):
            _remove(folder / entry.name)
            os.replace(entry, folder / entry.name)
    finally:
        _remove(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_with(path: str | Path, save: Callable[[Path], None]) -> None:
    """Atomically write `path` with `save(tmp_path)`, e.g. torch.save or fig.savefig."""
    with atomic_path(path) as tmp:
        save(tmp)


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); expected failures print one line-clear message and exit 1."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; outputs are written whole or not at all", file=sys.stderr)
        sys.exit(130)
