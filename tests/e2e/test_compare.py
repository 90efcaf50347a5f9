"""`make compare` (scripts/compare.py) against DVC: its report agrees with `dvc metrics diff`
and `dvc params diff`, an accuracy drop fails it, a missing base or missing results say
what to run. e2e/test_pull_request.py runs the pull-request workflow itself; the
report's tables and charts from made-up results are in unit/test_report.py.

One temporary git repo (tiny generated data) serves the tests: a commit without
results, a reproduced base, and a reproduced head trained with a tiny learning rate
for one epoch, so that its test accuracy drops far below the base's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import matplotlib.image
import pytest

from helpers import ROOT
from helpers.data import write_raw
from helpers.repos import Repo, make_repo, set_params, table_row

# Its tests share a module fixture that takes a minute to build: one worker builds it, once
# (pyproject.toml runs pytest with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("compare")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    rows = {"test accuracy": "test_acc", "test loss": "test_loss"}
    for name, key in rows.items():
        old, new, delta = (float(cell) for cell in table_row(report, name))
        assert old == pytest.approx(metrics[key]["old"], abs=5e-5), name
        assert new == pytest.approx(metrics[key]["new"], abs=5e-5), name
        assert delta == pytest.approx(metrics[key]["new"] - metrics[key]["old"], abs=5e-5), name

    # The report is the pull request's comment: pictures drawn in it, PNGs named, not linked.
    assert report.count("```mermaid") == 2 and "| true class → predicted |" in report
    assert "![" not in report
    for picture in ("curves.png", "confusion.png"):
        assert f"`{picture}`" in report
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
    assert "error: no-such-branch: no such commit, branch or tag in the git repository" in proc.stderr

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
