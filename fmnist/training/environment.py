"""The Python environment: what the lock (requirements/*.txt) pins, what is installed, and what a
model card records of it.

    describe(Path("requirements/runtime.txt"))   # {"python": "3.11.7", "torch": "2.14.1", ...}
    python -m fmnist.training.environment --prune requirements/runtime.txt   # what `make repro` runs

The command (run by the Makefile after installing a lock) removes any distribution the lock
doesn't list, then exits 1, with one line per problem, when .venv doesn't hold exactly the
lock's pins for this interpreter and platform, or when the project's own requirements (from
pyproject.toml, as installed) ask for something the lock doesn't pin: run `make lock` then.

Cheap to import (stdlib only); `packaging` is imported by the functions that parse a lock.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from fmnist.core.errors import DataError, PipelineError, run

PROJECT = "fmnist"
MAX_LOCK_BYTES = 16 * 2**20  # requirements/test.txt is about 0.4 MB
_NAME = re.compile(r"[-_.]+")


def canonical(name: str) -> str:
    """A distribution's name as the lock and pip compare it (PEP 503)."""
    return _NAME.sub("-", name).lower()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(2**20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: can't be read ({exc.strerror}); it is the lock `make lock` writes") from None
    return digest.hexdigest()


def describe(lock: Path) -> dict[str, str]:
    """What made a model, for its card: the Python and torch versions, the platform, and the
    sha256 of the lock file the environment was installed from (its bytes, as committed)."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        raise PipelineError("torch is not installed in this environment; run `make repro`") from None
    return {
        "python": platform.python_version(),
        "torch": torch,
        "platform": f"{sys.platform}-{platform.machine().lower()}",
        "lock": lock.as_posix(),
        "lock_sha256": file_sha256(lock),
    }


def read_lock(lock: Path) -> list[tuple[str, str, str | None]]:
    """(name, version, marker or None) of each pin of a hashed requirements file, in order."""
    try:
        with open(lock, "rb") as file:
            data = file.read(MAX_LOCK_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{lock}: can't be read ({exc.strerror}); run `make lock` to write it") from None
    if len(data) > MAX_LOCK_BYTES:
        raise DataError(f"{lock}: larger than {MAX_LOCK_BYTES // 2**20} MiB; not a lock `make lock` wrote")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{lock}: not UTF-8 text; restore it with `git checkout {lock}`") from None
    pins = []
    # One pin per logical line (backslash continues it); its options (--hash) and comments dropped.
    for number, line in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        spec = line.split(" #")[0].split(" --")[0].strip()
        if not spec or spec.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.+))?", spec)
        if not match:
            raise DataError(f"{lock}: pin {number} is not `name==version ; marker`: {spec[:80]!r}")
        pins.append((canonical(match.group(1)), match.group(2), match.group(3)))
    return pins


def locked(lock: Path, environment: dict | None = None) -> dict[str, str]:
    """name -> version of the pins whose marker holds for `environment` (default: this interpreter)."""
    from packaging.markers import Marker

    chosen: dict[str, str] = {}
    for name, version, marker in read_lock(lock):
        if marker is None or Marker(marker).evaluate(environment or {}):
            if chosen.get(name, version) != version:
                raise DataError(f"{lock}: pins {name} twice for this platform ({chosen[name]}, {version})")
            chosen[name] = version
    return chosen


def installed() -> dict[str, str]:
    """name -> version of every distribution this interpreter sees (the first, where two are)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist.version)
    return found


def unmet_requirements(pins: dict[str, str], extras: tuple[str, ...] = ()) -> list[str]:
    """The project's requirements (pyproject.toml's, as installed) that `pins` doesn't satisfy here."""
    from packaging.requirements import Requirement

    problems = []
    for line in metadata.requires(PROJECT) or []:
        requirement = Requirement(line)
        if requirement.marker and not any(requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras)):
            continue
        version = pins.get(canonical(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            have = f"pins {version}" if version else "doesn't pin it"
            problems.append(f"pyproject.toml asks for {requirement}, the lock {have}: run `make lock`")
    return problems


def differences(lock: Path, extras: tuple[str, ...] = ()) -> list[str]:
    """Everything that keeps this environment from being exactly `lock` (and the project)."""
    pins = locked(lock)
    have = installed()
    # A stale lock first: it is the cause of what follows, and `make lock` the cure.
    problems = unmet_requirements(pins, extras) if PROJECT in have else []
    problems += [f"{name} {have[name]} is installed, the lock doesn't list it"
                 for name in sorted(set(have) - set(pins) - {PROJECT})]
    for name, version in sorted(pins.items()):
        if have.get(name) != version:
            problems.append(f"{name}: the lock pins {version}, "
                            + (f"{have[name]} is installed" if name in have else "it isn't installed"))
    return problems


def prune(lock: Path) -> None:
    """Uninstall what the lock doesn't list (left over from an earlier lock, or installed by hand)."""
    extra = sorted(set(installed()) - set(locked(lock)) - {PROJECT})
    if extra:
        print(f"removing what {lock} doesn't list: {' '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Check that this environment holds exactly what a lock pins.")
    parser.add_argument("lock", type=Path, help="the lock installed, e.g. requirements/runtime.txt")
    parser.add_argument("--extra", action="append", default=[], help="an extra of the project the lock includes")
    parser.add_argument("--prune", action="store_true", help="first uninstall what the lock doesn't list")
    args = parser.parse_args()
    if args.prune:
        prune(args.lock)
    problems = differences(args.lock, tuple(args.extra))
    if problems:
        shown = problems[:12] + ([f"... and {len(problems) - 12} more"] if len(problems) > 12 else [])
        raise PipelineError(f"this environment ({sys.prefix}) is not {args.lock}:\n  " + "\n  ".join(shown))


if __name__ == "__main__":
    run(main)
