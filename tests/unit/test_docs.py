"""The README and docs/ against what they describe: the params table against params.yaml,
the headline figures against the committed metrics, the picture against dvc.lock, and
every link against the files and headings it points to.

    .venv/bin/python -m pytest tests/unit/test_docs.py
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import yaml

from helpers import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))


def markdown_table(text: str, first_header: str) -> list[list[str]]:
    """The rows (cells stripped) of the table whose header's first cell is `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def flat(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 200


def test_the_params_table_lists_every_key_of_params_yaml_with_its_value():
    params = flat(yaml.safe_load((ROOT / "params.yaml").read_text()))
    rows = markdown_table(README.read_text(), "key")
    table = {row[0].strip("`"): row[1].strip("`") for row in rows}
    assert list(table) == list(params)
    for key, value in params.items():
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        assert table[key] == shown, (key, table[key], value)


def test_the_headline_figures_are_the_committed_metrics():
    rows = {row[0]: row[1] for row in markdown_table(README.read_text(), "figure")}
    evaluation = json.loads((ROOT / "metrics/eval.json").read_text())
    training = json.loads((ROOT / "metrics/train.json").read_text())
    assert rows["test accuracy (`metrics/eval.json`)"] == f"{evaluation['test_acc']:.2%}"
    assert rows["test loss"] == f"{evaluation['test_loss']:.4f}"
    assert rows["best validation accuracy, epochs (`metrics/train.json`)"] == \
        f"{training['best_val_acc']:.2%}, {training['epoch']} epochs"


def test_the_readmes_picture_is_the_committed_runs():
    """docs/images/misclassified.png holds the bytes dvc.lock records for metrics/misclassified.png."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    [record] = [out for out in lock["stages"]["evaluate"]["outs"] if out["path"].endswith("misclassified.png")]
    picture = (ROOT / "docs/images/misclassified.png").read_bytes()
    assert hashlib.md5(picture, usedforsecurity=False).hexdigest() == record["md5"], \
        "copy metrics/misclassified.png of the committed run to docs/images/"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_points_to_a_file_and_heading_that_exist(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} (no such file)"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target} (no such heading in {linked.name})"
