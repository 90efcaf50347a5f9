"""fmnist/serve/report.py: the comparison report's charts and confusion changes, from made-up
results (no DVC); its Mermaid charts drawn with mermaid from npm (tests/mermaid.mjs) where
node has it, as GitHub draws them; `make compare` runs scripts/compare.py.

The report against real DVC results: e2e/test_compare.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import numpy as np
import pandas as pd
import pytest

from fmnist.core.dataset import CLASSES
from fmnist.serve.report import (
    CHART_LINES,
    confusion_changes,
    confusion_markdown,
    curves_markdown,
    curves_mermaid,
    metrics_table,
    per_class_f1_table,
    render_markdown,
)
from helpers import ROOT
from helpers.tools import NODE_HINT, NPM_HINT, need, need_tool

PALETTE = [colour for *_, colour in CHART_LINES]


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
    for (side, split, _), values in zip(CHART_LINES, lines, strict=True):
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
    node = need_tool("node", NODE_HINT)
    need(all((NODE_MODULES / name).is_dir() for name in ("mermaid", "jsdom")),
         f"mermaid and jsdom from npm in {NODE_MODULES}", NPM_HINT)
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
    page = ROOT / "docs/pull-requests.md"  # it shows a real comment's chart
    proc = subprocess.run([node, str(ROOT / "tests" / "mermaid.mjs"), str(NODE_MODULES),
                           *map(str, (path, page, broken))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    charts = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(chart["error"] is None for chart in charts), charts
    report_charts = [c for c in charts if c["file"] == str(path)]
    assert len(report_charts) == 2
    for chart in report_charts:
        # Four lines in the caption's colours, each drawn through all 5 epochs.
        assert [line["stroke"] for line in chart["lines"]] == PALETTE
        assert all(line["points"] == 5 and not line["nan"] for line in chart["lines"]), chart
    page_charts = [c for c in charts if c["file"] == str(page)]
    assert page_charts and all(c["lines"] and not any(line["nan"] for line in c["lines"]) for c in page_charts)
    assert [c["lines"][0]["nan"] for c in charts if c["file"] == str(broken)] == [True]
