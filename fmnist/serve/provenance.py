"""Where results come from: git revisions, the dvc.lock that records them, DVC's copies, GTO's versions.

    commit = git_commit("main")                         # full hash; DataError if no such revision
    data, where = read_model_bytes_at("fashion-classifier@v1.0.0")   # a registered version, through DVC
    first_commit_recording(data, Path("models"))        # the commit whose dvc.lock made these bytes

Used by `fmnist-predict` (--rev, --info) and `make compare` (scripts/compare.py); no
stage reads git.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from fmnist.core.errors import DataError, PipelineError, flat
from fmnist.core.io import md5_hex, read_bytes, read_stream
from fmnist.model.model_file import MAX_MODEL_BYTES, MODEL_WHAT

MAX_DVC_YAML_BYTES = 1 << 20  # a page of YAML


def pipeline_paths(root: Path = Path("."), *names: str) -> dict[str, str]:
    """dvc.yaml's vars, where every path the pipeline reads or writes is named once
    (`names`: the ones the caller needs, each checked to be there)."""
    where = root / "dvc.yaml"
    try:
        doc = yaml.safe_load(read_bytes(where, "run from the project's top folder", MAX_DVC_YAML_BYTES, "a dvc.yaml"))
        found = {k: v for item in doc.get("vars", []) if isinstance(item, dict) for k, v in item.items()}
        missing = [name for name in names if not isinstance(found.get(name), str)]
    except (yaml.YAMLError, AttributeError, TypeError) as exc:
        raise PipelineError(f"{where}: not a pipeline's dvc.yaml ({flat(exc, 160)})") from None
    if missing:
        raise PipelineError(f"{where}: expected vars {', '.join(names)}; {', '.join(missing)} missing")
    return found


def model_path(root: Path = Path(".")) -> str:
    """Where the train stage writes the model file: dvc.yaml's vars.model (models/model.pt
    outside a checkout of the project)."""
    return pipeline_paths(root, "model")["model"] if (root / "dvc.yaml").exists() else "models/model.pt"

# A registered model version: GTO's tag format, `gto register fashion-classifier --version v1.0.0`.
_VERSION = re.compile(r"(?P<name>[^@\s]+)@(?P<version>v\d+\.\d+\.\d+\S*)")


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError("git is not installed; it is needed to read results at a git revision") from None


def git(*args: str, cwd: Path = Path(".")) -> str:
    """`git ARGS`' output, stripped; DataError with git's own words when it fails."""
    proc = _git(list(args), cwd)
    if proc.returncode != 0:
        raise DataError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _git_top(what: str, cwd: Path) -> str:
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    if top.returncode:
        raise DataError(f"{what}: {Path(cwd).resolve()} is not in a git repository, so there are no revisions "
                        f"to read; run it inside a clone of the project")
    return top.stdout.strip()


def git_commit(rev: str, cwd: Path = Path("."),
               hint: str = "`git tag` lists the tags; a model version is NAME@vX.Y.Z") -> str:
    """The full hash of the commit `rev` (a commit, branch or tag) names; DataError (ending in `hint`) if none."""
    top = _git_top(rev, cwd)
    found = _git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"], cwd)
    if found.returncode or rev.startswith("-"):
        raise DataError(f"{rev}: no such commit, branch or tag in the git repository {top} ({hint})")
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
    return DataError(f"{what}: {flat(exc, 300) or type(exc).__name__}; {hint}")


def read_model_bytes_at(rev: str, path: str | None = None) -> tuple[bytes, dict]:
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
    path = path or model_path()
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
        with dvc.api.open(path, rev=commit, mode="rb") as stream:  # bounded: not dvc.api.read's whole file
            data = read_stream(stream, f"{path} at {rev}",
                               f"the copy DVC holds for {rev} is not a model of this project",
                               MAX_MODEL_BYTES, MODEL_WHAT)
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
