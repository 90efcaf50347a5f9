"""The Makefile's set-up: it takes Python 3.10 to 3.13 and refuses any other with one message.

Only one Python is installed where the tests run, so the others are played by a stand-in
interpreter that reports another version and runs the Makefile's check as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from helpers.tools import MAKE_HINT, need_tool

STAND_IN = """#!/bin/sh
# Python {version}, as far as the Makefile's check can tell: `$0 -c CODE` runs CODE.
exec "{python}" -c 'import sys; sys.version_info = ({major}, {minor}, 0, "final", 0); \
sys.version = "{version} (stand-in)"; code = sys.argv[1]; del sys.argv[1]; exec(code)' "$2"
"""


def make(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # A make of its own, not a sub-make of `make test` (whose MAKEFLAGS would leak in).
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    return subprocess.run([need_tool("make", MAKE_HINT), "--no-print-directory", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def make_setup(tmp_path: Path, python: str, *flags: str) -> subprocess.CompletedProcess:
    """`make .venv/.installed PYTHON=python` in a copy of the Makefile (the real .venv is left alone)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")  # the lock it installs
    return make([*flags, ".venv/.installed", f"PYTHON={python}"], tmp_path)


def stand_in(tmp_path: Path, major: int, minor: int) -> str:
    path = tmp_path / f"python{major}.{minor}"
    path.write_text(STAND_IN.format(python=sys.executable, major=major, minor=minor, version=f"{major}.{minor}.0"))
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("major, minor", [(3, 9), (3, 14), (2, 7)])
def test_a_python_outside_the_range_is_refused_naming_the_range(tmp_path, major, minor):
    proc = make_setup(tmp_path, stand_in(tmp_path, major, minor))
    assert proc.returncode != 0
    assert f"Python 3.10 to 3.13 is required (what torch 2.14 and DVC support), found {major}.{minor}.0" \
        in proc.stderr, proc.stderr
    assert "make PYTHON=python3.12" in proc.stderr
    assert not (tmp_path / ".venv").exists()  # refused before anything was installed


def test_a_missing_python_is_named(tmp_path):
    proc = make_setup(tmp_path, "python3.99")
    assert proc.returncode != 0
    assert "python3.99 not found; install Python 3.10 to 3.13 or name one with make PYTHON=..." in proc.stderr
    assert not (tmp_path / ".venv").exists()


@pytest.mark.parametrize("minor", [10, 11, 12, 13])
def test_every_supported_python_passes_the_check(tmp_path, minor):
    # The check alone: what follows it (creating .venv, pip install) is dry-run here.
    python = stand_in(tmp_path, 3, minor)
    lines = make_setup(tmp_path, python, "-n").stdout.splitlines()
    check = next((line for line in lines if "sys.version_info" in line), None)
    assert check is not None and check.startswith(python), lines
    proc = subprocess.run(check, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)  # noqa: S602 - the Makefile's recipe line, run as make runs it
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
