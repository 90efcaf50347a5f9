"""One rule for a test whose outside tool is missing (tests/helpers/tools.py): under CI
(CI=true) it fails, elsewhere it skips with the command that installs the tool; and no
test skips for a missing tool any other way, which would pass unseen under CI."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from helpers import ROOT
from helpers.tools import need, need_module, need_tool

TESTS = ROOT / "tests"
# Skips that are not about a tool: the machine has no root to mount a file system with.
NOT_A_TOOL = {"tests/e2e/test_failures.py": 1}


def test_a_missing_tool_skips_with_its_install_command_and_fails_under_ci(monkeypatch):
    for ci in (None, "false", "", "0"):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.skip.Exception, match=r"^needs no-such-tool-x; install it: apt-get install x$"):
            need_tool("no-such-tool-x", "apt-get install x")
    for ci in ("true", "TRUE"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception,
                           match=r"^needs no-such-tool-x, missing under CI \(CI=true\), where "
                                 r"a skipped test would pass unseen; install it: apt-get install x$"):
            need_tool("no-such-tool-x", "apt-get install x")
        with pytest.raises(pytest.fail.Exception, match=r"^needs the Python module no_such_module_x, missing under CI"):
            need_module("no_such_module_x", "pip install x")
        with pytest.raises(pytest.fail.Exception, match=r"^needs mermaid from npm, missing under CI"):
            need(False, "mermaid from npm", "npm install mermaid")
        # What is there is used, CI or not.
        assert need_tool("no-such-tool-x", "-", "sh") == shutil.which("sh")
        assert need_module("json", "-") is json
        need(True, "anything", "-")


def test_no_test_skips_for_a_missing_tool_but_through_the_rule():
    """pytest.skip, importorskip, a skipif on shutil.which or a test of $CI of its own
    anywhere else would make a check that can't fail under CI."""
    found: dict[str, int] = {}
    pattern = re.compile(r"pytest\.skip\(|importorskip|skipif\([^)]*(which|find_spec)|environ\.get\(\s*['\"]CI['\"]")
    for path in sorted(TESTS.rglob("*.py")):
        name = path.relative_to(ROOT).as_posix()
        if name in ("tests/helpers/tools.py", "tests/unit/test_missing_tools.py"):
            continue
        count = len(pattern.findall(path.read_text(encoding="utf-8")))
        if count:
            found[name] = count
    assert found == NOT_A_TOOL
