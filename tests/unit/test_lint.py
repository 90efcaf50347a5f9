"""The linter: `ruff check .`, as pyproject.toml's [tool.ruff] configures it, finds nothing.

A test rather than a step before pytest in `make test`: it shows in the summary beside the
other results, it runs wherever the tests do (`make test`, CI on every Python, the quick
loop on macOS), and a lint finding doesn't stop the suite from telling the rest.
`make lint` runs ruff alone.

Skipped without ruff (it is in the test extra's lock), except in CI (CI=true), where it fails.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT
from helpers.tools import PIP_HINT, need_module


def test_ruff_check_finds_nothing():
    need_module("ruff", PIP_HINT)
    # --no-cache: nothing written into the checkout by the test run.
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"`ruff check .` (fix each, or say why on its line: `# noqa: RULE - why`):\n"
                    f"{proc.stdout}{proc.stderr}", pytrace=False)
