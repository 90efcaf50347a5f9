"""`make lock`: re-resolve the lock (requirements/*.txt) from pyproject.toml's ranges, for every
platform and Python the project supports (Linux, macOS and Windows; Python 3.10 to 3.13).

    make lock              # after editing pyproject.toml's dependencies; every other pin stays
    make lock UPGRADE=1    # the newest releases pyproject.toml's ranges allow
    python scripts/lock.py --versions   # only rewrite runtime-versions.txt from runtime.txt (offline)

uv resolves (`uv pip compile --universal`: it reads the wheels' metadata, never the wheels, so a
lock for every platform costs megabytes, not the gigabytes of torch's CUDA builds); pip installs
(`make repro`, `make test`: `pip install --require-hashes --no-deps`), taking each file from any
index it knows that holds a file with the locked hash, a local mirror included. Writes, in
requirements/ (each file whole or not at all):

  test.txt              what `make test` installs: the runtime, the test extra, pip, setuptools
  runtime.txt           what `make repro` installs: test.txt's runtime part, at the same versions
  pip.txt               the installer, installed first (an old pip can't build the project editable)
  runtime-versions.txt  name==version of the packages the stages import and of what those need: a
                        DVC dependency of the stages whose results they can change (dvc.yaml), so a
                        new torch reruns them and a new pytest reruns nothing

Each hashed file's header records a sha256 of the pyproject.toml lists it was resolved from;
tests/test_environment.py fails when they disagree (run `make lock`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # fmnist.core.errors (stdlib only): this runs on the base Python, not .venv's

from fmnist.core.errors import PipelineError, flat, run  # noqa: E402

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli into the test environment
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

LOCK_DIR = Path("requirements")
TEST_LOCK, RUNTIME_LOCK, PIP_LOCK, VERSIONS = (LOCK_DIR / name for name in (
    "test.txt", "runtime.txt", "pip.txt", "runtime-versions.txt"))
# Installed beside pyproject.toml's dependencies: the installer itself, and (added from
# [build-system]) the build backend with which pip builds the project without fetching it.
INSTALLER = ["pip"]
# The distributions the stages' modules import (tests/test_environment.py checks the list against
# their imports); runtime-versions.txt holds these and everything they need, transitively.
STAGE_PACKAGES = ("dvc", "dvclive", "matplotlib", "numpy", "onnx", "onnxscript", "pandas", "pyyaml",
                  "scikit-learn", "torch", "torchvision", "tqdm")
DIGEST_LINE = "# pyproject.toml's requires-python, dependencies{extra} and build requires, sha256: {digest}"
DIGEST_RE = re.compile(r"^# pyproject\.toml's .*, sha256: ([0-9a-f]{64})$", re.M)


def lock_inputs(pyproject: dict, extras: tuple[str, ...] = ()) -> dict:
    """What a lock file is resolved from: the parts of pyproject.toml that decide it."""
    project = pyproject["project"]
    inputs = {
        "requires-python": project["requires-python"],
        "dependencies": project["dependencies"],
        "build-system": pyproject["build-system"]["requires"],
        "installer": INSTALLER,
    }
    for extra in extras:
        inputs[f"optional-dependencies.{extra}"] = project["optional-dependencies"][extra]
    return inputs


def inputs_digest(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock_text: str) -> str | None:
    match = DIGEST_RE.search(lock_text)
    return match.group(1) if match else None


def read_pyproject(path: Path = Path("pyproject.toml")) -> dict:
    if tomllib is None:
        raise PipelineError("reading pyproject.toml needs Python 3.11 or newer (tomllib), or tomli installed")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"{path}: can't be read as TOML ({exc})") from None


# --- runtime-versions.txt -----------------------------------------------------

def entries(lock_text: str) -> list[tuple[str, str, set[str]]]:
    """(name, 'name==version ; marker', names of the packages that need it) of each pin, in order,
    from a file uv wrote with its `# via` annotations."""
    found = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", lock_text):
        first, *rest = block.splitlines() or [""]
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==", first)
        if not match:
            continue
        via = set()
        for line in rest:
            text = line.strip().lstrip("#").strip()
            text = text[4:] if text.startswith("via ") else text
            if line.strip().startswith("#") and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) and text != "via":
                via.add(_canonical(text))
        found.append((_canonical(match.group(1)), first.removesuffix("\\").strip(), via))
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stage_versions(runtime_text: str, roots: tuple[str, ...] = STAGE_PACKAGES) -> str:
    """runtime-versions.txt: the pins (no hashes) of `roots` and of their dependencies."""
    pins = entries(runtime_text)
    needs: dict[str, set[str]] = {}
    for name, _, via in pins:
        for parent in via:
            needs.setdefault(parent, set()).add(name)
    wanted, todo = set(), [_canonical(name) for name in roots]
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(needs.get(name, ()))
    missing = sorted(set(map(_canonical, roots)) - {name for name, _, _ in pins})
    if missing:
        raise PipelineError(f"{RUNTIME_LOCK}: doesn't pin {', '.join(missing)} (STAGE_PACKAGES in "
                            f"scripts/lock.py); is it still a runtime dependency in pyproject.toml?")
    lines = [spec for name, spec, _ in pins if name in wanted]
    return ("# The versions of the packages the pipeline's stages import, and of everything those need,\n"
            "# for each platform and Python (from runtime.txt, without hashes). dvc.yaml makes it a\n"
            "# dependency of the stages whose results they can change. `make lock` writes it.\n"
            + "\n".join(lines) + "\n")


# --- writing ------------------------------------------------------------------

def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would reach git as is
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compile_lock(uv: str, out: Path, inputs: dict, extras: tuple[str, ...] = (), constraint: Path | None = None,
                 upgrade: bool = False, project: bool = True) -> None:
    """uv pip compile into a copy of `out` (uv keeps the copy's pins where it can), then rename it.
    `project`: pyproject.toml's dependencies too, not only the installer and build backend."""
    python = re.match(r">=\s*(\d+\.\d+)", inputs["requires-python"])
    if not python:
        raise PipelineError(f"pyproject.toml: requires-python {inputs['requires-python']!r} should start "
                            f"with >=X.Y, the oldest Python the lock must cover")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if out.exists() and not upgrade:
            Path(tmp).write_bytes(out.read_bytes())
        cmd = [uv, "pip", "compile", "--quiet", "--no-config", "--universal", "--generate-hashes",
               "--python-version", python.group(1), "--custom-compile-command", "make lock",
               *(["pyproject.toml"] if project else []), "-", "-o", tmp]
        cmd += [arg for extra in extras for arg in ("--extra", extra)]
        cmd += ["--constraint", str(constraint)] if constraint else []
        cmd += ["--upgrade"] if upgrade else []
        extra_inputs = "\n".join(inputs["installer"] + (inputs["build-system"] if project else [])) + "\n"
        proc = subprocess.run(cmd, input=extra_inputs, text=True, capture_output=True)
        if proc.returncode != 0:
            raise PipelineError(f"uv pip compile for {out} failed: {flat(proc.stderr, 600)}")
        digest = DIGEST_LINE.format(extra=", " + ", ".join(f"the {e} extra" for e in extras) if extras else "",
                                    digest=inputs_digest(inputs))
        write_atomic(out, (digest + "\n" if project else "") + Path(tmp).read_text(encoding="utf-8"))
    finally:
        Path(tmp).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uv", help="the uv executable (make lock installs a pinned one)")
    parser.add_argument("--upgrade", action="store_true", help="take the newest releases the ranges allow")
    parser.add_argument("--versions", action="store_true", help="only rewrite runtime-versions.txt from runtime.txt")
    args = parser.parse_args()
    os.chdir(ROOT)
    if not args.versions:
        if not args.uv:
            raise PipelineError("give --uv PATH (make lock does), or --versions")
        pyproject = read_pyproject()
        # One resolution for both: the test set first, then the runtime part constrained to its versions.
        compile_lock(args.uv, TEST_LOCK, lock_inputs(pyproject, ("test",)), ("test",), upgrade=args.upgrade)
        compile_lock(args.uv, RUNTIME_LOCK, lock_inputs(pyproject), constraint=TEST_LOCK)
        compile_lock(args.uv, PIP_LOCK, lock_inputs(pyproject), constraint=TEST_LOCK, project=False)
    try:
        runtime = RUNTIME_LOCK.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineError(f"{RUNTIME_LOCK}: can't be read ({exc.strerror}); run `make lock`") from None
    write_atomic(VERSIONS, stage_versions(runtime))
    print(f"wrote {TEST_LOCK}, {RUNTIME_LOCK}, {PIP_LOCK}, {VERSIONS}" if not args.versions else f"wrote {VERSIONS}")


if __name__ == "__main__":
    run(main)
