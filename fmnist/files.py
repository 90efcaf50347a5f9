"""Every file the pipeline reads or writes goes through here: params, raw and prepared
data, models, atomic writes, the download. The stages, `scripts/`, `bench/` and the
`fmnist-predict` command share it; the rest of the package only computes.

    params = load_params()                        # checked; ParamError lists every problem
    images, labels = load_split(Path("data/prepared/test.pt"))
    net, card = load_model(Path("models/model.pt"))
    save_torch(Path("models/model.pt"), {...})    # temp file + rename: whole or absent

Reading: anything damaged (truncated, garbage, the wrong kind of object, a missing key,
a wrong shape) raises DataError naming the file, what is wrong and what to do.
Writing: everything goes to a temporary file beside its target and is renamed into
place, so a stage killed at any moment, or a full disk, leaves the previous output or
none; a failed write raises OutputError naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from fmnist.data import CLASSES, EXPECTED_COUNTS, RAW_FILES, check_pair, decompress, parse_idx
from fmnist.errors import DataError, OutputError, ParamError, shown
from fmnist.model import ARCHITECTURES, build_model, weights_problem
from fmnist.params import check_params

PARAMS_FILE = "params.yaml"
RAW_ENV = "FASHION_MNIST_DIR"  # a folder holding the four IDX files: no download
_RAW_HINT = f"set {RAW_ENV} to a folder holding the four IDX files to use a local copy"


# --- params -----------------------------------------------------------------

def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """Read and check the whole params file; raise ParamError listing every problem."""
    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found; run from the repository's top folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError(f"{path}: cannot be read as text ({_reason(exc)}); restore it with "
                         f"`git checkout {path}`") from None
    except (yaml.YAMLError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise ParamError(f"{path}: not valid YAML: {_one_line(exc)}; fix it or restore it with "
                         f"`git checkout {path}`") from None
    if params is None:
        raise ParamError(f"{path}: the file is empty; restore it with `git checkout {path}`")
    errors = check_params(params)
    if len(errors) == 1:
        raise ParamError(f"{path}: {errors[0]}")
    if errors:  # one line each
        raise ParamError(f"{path} has {len(errors)} problems:\n  " + "\n  ".join(errors))
    return params


# --- writing ----------------------------------------------------------------

def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception's message, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    first = text.split(". ")[0].rstrip(".")
    return first if len(first) <= limit else first[:limit - 3] + "..."


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
        raise OutputError(f"{path}: could not write it ({_reason(exc)}){left}") from None


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
        raise DataError(f"{path}: cannot be read ({_reason(exc)}); {hint}") from None


def load_torch(path: Path, hint: str) -> Any:
    """torch.load with weights_only (no code runs from the file); any damage is a DataError."""
    data = read_bytes(path, hint)
    if not data:
        raise DataError(f"{path}: the file is empty; {hint}")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch reports damage with many exception types
        if not data.startswith(b"PK\x03\x04"):  # what torch.save writes: a zip archive
            raise DataError(f"{path}: not a torch file (it doesn't start like one); {hint}") from None
        raise DataError(f"{path}: not a readable torch file, truncated or damaged ({_one_line(exc)}); {hint}") from None


def read_raw_split(raw_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (uint8 N x 28 x 28) and labels (int64 N) of one split of the raw IDX files."""
    arrays = []
    for kind in ("images", "labels"):
        path = raw_dir / RAW_FILES[split, kind]
        arrays.append(parse_idx(read_bytes(path, "run the download stage first (dvc repro)"), str(path), kind))
    check_pair(*arrays, str(raw_dir / RAW_FILES[split, "images"]), str(raw_dir / RAW_FILES[split, "labels"]))
    images, labels = arrays
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


PREPARED_HINT = "re-create it with `dvc repro --force prepare`"


def check_split(obj: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a prepared split, or DataError saying what is wrong with it."""
    if not isinstance(obj, dict) or not {"images", "labels"} <= set(obj):
        found = f"keys {sorted(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(f"{name}: expected a dict with 'images' and 'labels', found {found}; {PREPARED_HINT}")
    images, labels = obj["images"], obj["labels"]
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 3
            and tuple(images.shape[1:]) == (28, 28)):
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise DataError(f"{name}: 'images' should be uint8 (N, 28, 28), found {what}; {PREPARED_HINT}")
    if not (isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.ndim == 1):
        what = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise DataError(f"{name}: 'labels' should be int64 (N,), found {what}; {PREPARED_HINT}")
    if len(images) != len(labels):
        raise DataError(f"{name}: {len(images)} images but {len(labels)} labels; {PREPARED_HINT}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{name}: labels outside 0-{len(CLASSES) - 1}; {PREPARED_HINT}")
    return images, labels


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A prepared split (data/prepared/<name>.pt), checked."""
    hint = "run the prepare stage first (dvc repro)" if not path.exists() else PREPARED_HINT
    return check_split(load_torch(path, hint), str(path))


MODEL_HINT = "re-create it with `dvc repro --force train` (or `dvc checkout` to restore the cached one)"


def check_model(obj: Any, name: str, hint: str = MODEL_HINT) -> tuple[torch.nn.Module, dict]:
    """The net a saved model describes, with its weights loaded, and the model file's dict."""
    need = {"state_dict", "model", "classes"}
    if isinstance(obj, dict) and {"optimizer", "history", "best"} <= set(obj):
        raise DataError(f"{name}: this is a training checkpoint, not a model file "
                        f"(the train stage writes both); {hint}")
    if not isinstance(obj, dict) or not need <= set(obj):
        found = f"keys {sorted(map(str, obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise DataError(f"{name}: not a model file of this project (expected keys {sorted(need)}, "
                        f"found {found}); {hint}")
    if not isinstance(obj["model"], str) or obj["model"] not in ARCHITECTURES:
        raise DataError(f"{name}: unknown architecture {shown(obj['model'])} (known: {', '.join(ARCHITECTURES)}); {hint}")
    classes = obj["classes"]
    # The net's last layer has one output per class, and the labels are 0-9.
    if not isinstance(classes, (list, tuple)) or len(classes) != len(CLASSES) \
            or not all(isinstance(c, str) for c in classes):
        raise DataError(f"{name}: 'classes' should be a list of {len(CLASSES)} class names, "
                        f"found {shown(classes)}; {hint}")
    net = build_model(obj["model"], len(classes))
    problem = weights_problem(obj["state_dict"], net)
    if problem:
        raise DataError(f"{name}: not the weights of a {obj['model']} net: {problem}; {hint}")
    net.load_state_dict(obj["state_dict"])
    return net.eval(), obj


def load_model(path: Path) -> tuple[torch.nn.Module, dict]:
    """models/model.pt as the train stage wrote it: (net in eval mode, the file's dict)."""
    hint = "run the train stage first (dvc repro)" if not path.exists() else MODEL_HINT
    return check_model(load_torch(path, hint), str(path), hint)


# --- the raw files ------------------------------------------------------------

def _read_local(folder: Path, name: str) -> bytes:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return read_bytes(candidate, f"check {RAW_ENV}={folder}")
    raise DataError(f"{folder / name}: missing (neither {name} nor {name}.gz is in {RAW_ENV}={folder})")


def download(name: str, workdir: Path, mirrors: list[str], md5s: dict[str, str]) -> bytes:
    """Fetch NAME.gz from the first mirror that serves it with the right MD5 sum."""
    from torchvision.datasets.utils import download_url

    filename = f"{name}.gz"
    failures = []
    for mirror in mirrors:
        try:
            download_url(mirror + filename, workdir, filename=filename, md5=md5s[filename])
            return (workdir / filename).read_bytes()
        except RuntimeError as exc:  # torchvision's word for a checksum mismatch
            failures.append(f"{mirror}{filename}: {exc} (MD5 sum is not {md5s[filename]})")
        except Exception as exc:  # noqa: BLE001 - network errors come in many types; each is reported
            failures.append(f"{mirror}{filename}: {type(exc).__name__}: {exc}")
        (workdir / filename).unlink(missing_ok=True)
    raise DataError(f"could not download {filename}: " + "; ".join(failures) + f". To work offline, {_RAW_HINT}")


def fetch_raw(source: str | None, workdir: Path) -> dict[str, bytes]:
    """The four raw files, uncompressed and checked, keyed by name.

    From the folder `source` (gzipped or not) when given, else downloaded from the
    mirrors torchvision knows, with their MD5 sums checked.
    """
    raw: dict[str, bytes] = {}
    if source:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise DataError(f"{RAW_ENV}={source}: no such folder; point it at a folder holding the four IDX files")
        print(f"reading the raw files from {RAW_ENV}={folder}")
        for name in RAW_FILES.values():
            raw[name] = decompress(_read_local(folder, name), name)
    else:
        from torchvision.datasets import FashionMNIST

        md5s = dict(FashionMNIST.resources)
        for name in RAW_FILES.values():
            raw[name] = decompress(download(name, workdir, FashionMNIST.mirrors, md5s), name)

    arrays = {name: parse_idx(raw[name], name, kind) for (_, kind), name in RAW_FILES.items()}
    for split, expected in EXPECTED_COUNTS.items():
        images, labels = RAW_FILES[split, "images"], RAW_FILES[split, "labels"]
        check_pair(arrays[images], arrays[labels], images, labels)
        if len(arrays[images]) != expected:
            print(f"note: {images} holds {len(arrays[images])} images; the official release has {expected}")
    return raw


# --- pictures, models at a git revision or registered version, provenance ------------
# For the `fmnist-predict` command (fmnist/predict.py) and the export stage.

MODEL_FILE = "models/model.pt"  # where the train stage writes the model (dvc.yaml: vars.model)
# A registered model version: GTO's tag format, `gto register fashion-classifier --version v1.0.0`.
_VERSION = re.compile(r"(?P<name>[^@\s]+)@(?P<version>v\d+\.\d+\.\d+\S*)")


def read_picture(path: Path) -> bytes:
    return read_bytes(path, "expected a PNG, JPEG or WebP picture")


def md5_hex(data: bytes) -> str:
    """The hash DVC records for a file in dvc.lock (`md5:`)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError("git is not installed; it is needed to read a model at a git revision") from None


def _git_top(what: str, cwd: Path) -> str:
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    if top.returncode:
        raise DataError(f"{what}: {Path(cwd).resolve()} is not in a git repository, so there are no revisions "
                        f"to read; run it inside a clone of the project")
    return top.stdout.strip()


def git_commit(rev: str, cwd: Path = Path(".")) -> str:
    """The full hash of the commit `rev` (a commit, branch or tag) names; DataError if none."""
    top = _git_top(rev, cwd)
    found = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"], cwd)
    if found.returncode or rev.startswith("-"):
        raise DataError(f"{rev}: no such commit, branch or tag in the git repository {top} "
                        f"(`git tag` lists the tags; a model version is NAME@vX.Y.Z)")
    return found.stdout.strip()


def locked_md5(commit: str, path: str, cwd: Path = Path(".")) -> str | None:
    """The md5 that `commit`'s dvc.lock records for the output `path`; None if it has none."""
    shown = _git(["show", f"{commit}:dvc.lock"], cwd)
    try:
        lock = yaml.safe_load(shown.stdout) if shown.returncode == 0 else None
    except yaml.YAMLError:
        return None
    stages = lock.get("stages") if isinstance(lock, dict) else None
    for stage in (stages or {}).values():
        for out in (stage.get("outs") or []) if isinstance(stage, dict) else []:
            if isinstance(out, dict) and out.get("path") == path:
                return out.get("md5")
    return None


def first_commit_recording(data: bytes, folder: Path) -> str | None:
    """The oldest commit of the git repository around `folder` whose dvc.lock records a file
    with these bytes (by its md5): the commit of the code, params and data that made it.
    None when no commit does (not committed yet) or `folder` is in no git repository."""
    found = _git(["log", "--reverse", "--format=%H", "-S", md5_hex(data), "--", ":(top,glob)**/dvc.lock"], folder)
    lines = found.stdout.split() if found.returncode == 0 else []
    return lines[0] if lines else None


def _dvc_error(what: str, exc: Exception, hint: str) -> DataError:
    return DataError(f"{what}: {' '.join(str(exc).split())[:300] or type(exc).__name__}; {hint}")


def read_model_bytes_at(rev: str, path: str = MODEL_FILE) -> tuple[bytes, dict]:
    """The model file's bytes at `rev`, read through DVC from the cache or the default remote.

    `rev` is a commit, branch or tag, or a registered version NAME@vX.Y.Z (GTO's tag,
    looked up with dvc.api.artifacts_show, which also gives the artifact's path). Works
    in the DVC project around the current folder. Returns (bytes, where) with where =
    {"rev", "commit", "path"}; a DataError says what is missing and what to do.
    """
    import dvc.api
    from dvc.exceptions import ArtifactNotFoundError, DvcException, NotDvcRepoError, PathMissingError
    from dvc.scm import SCMError

    registered = _VERSION.fullmatch(rev)
    _git_top(rev, Path("."))  # DVC's own errors outside a git repository are obscure
    commit = None
    try:
        if registered:
            name, version = registered["name"], registered["version"]
            try:
                found = dvc.api.artifacts_show(name, version=version)
            except ArtifactNotFoundError as exc:
                raise _dvc_error(rev, exc, f"`gto show {name}` lists its registered versions") from None
            commit, path = git_commit(found["rev"]), found["path"]
        else:
            commit = git_commit(rev)
        data = dvc.api.read(path, rev=commit, mode="rb")
    except NotDvcRepoError as exc:
        raise _dvc_error(rev, exc, "run it inside a clone of the project") from None
    except PathMissingError:  # DVC says "does not exist" for outputs it can't find the data of, too
        md5 = locked_md5(commit, path) if commit else None
        if md5 is None:
            raise DataError(f"{path} at {rev}: that commit's dvc.lock records no such output "
                            f"(no model was trained and committed there)") from None
        raise DataError(f"{path} at {rev}: neither the DVC cache nor the default remote holds it (md5 {md5}); "
                        f"run `dvc push` where it was made, check `dvc remote list`, "
                        f"or `dvc repro` at that commit") from None
    except (DvcException, SCMError) as exc:
        raise _dvc_error(f"{path} at {rev}", exc, "check the DVC remote (`dvc remote list`) and that "
                         "the model was pushed (`dvc push`)") from None
    return data, {"rev": rev, "commit": commit, "path": path}


def model_from_bytes(data: bytes, name: str, hint: str = MODEL_HINT) -> tuple[torch.nn.Module, dict]:
    """A model file's bytes (read by DVC, say) as (net in eval mode, the file's dict), as load_model."""
    try:
        obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch reports damage with many exception types
        raise DataError(f"{name}: not a readable torch file ({' '.join(str(exc).split())[:200]}); {hint}") from None
    return check_model(obj, name, hint)
