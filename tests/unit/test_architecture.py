"""The map of the package: dvc.yaml's deps and docs/architecture.md agree with the imports."""

from __future__ import annotations

import re

import yaml

from helpers import ROOT, imports

# docs/architecture.md's columns: the entry point each one is.
ENTRY_POINTS = {
    "download": "stages/download.py", "prepare": "stages/prepare.py", "train": "stages/train.py",
    "evaluate": "stages/evaluate.py", "export": "stages/export.py", "fmnist-predict": "fmnist/predict.py",
    "make compare": "scripts/compare.py", "make bench": "bench/bench.py", "fmnist-sweep": "fmnist/sweep.py",
}


def modules_of(script: str) -> set[str]:
    """The package's modules `script` runs (fmnist/predict.py counts itself), without __init__.py."""
    used = imports(ROOT / script) | ({script} if script.startswith("fmnist/") else set())
    return {path for path in used if path.startswith("fmnist/") and path != "fmnist/__init__.py"}


def test_dvc_yaml_lists_every_module_each_stage_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = f"stages/{name}.py"
        deps = {d for d in stage["deps"] if d.endswith(".py")}
        assert script in deps
        assert deps == imports(ROOT / script) | {script}, name


def test_the_download_stage_reads_no_params_and_runs_no_model_or_training_code():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["download"]
    assert "params" not in stage
    assert not modules_of("stages/download.py") & {
        "fmnist/params.py", "fmnist/model.py", "fmnist/model_file.py", "fmnist/training.py", "fmnist/augment.py"}


def architecture_table() -> tuple[list[str], dict[str, set[str]]]:
    """docs/architecture.md's first table: its columns, and for each the modules marked x."""
    text = (ROOT / "docs/architecture.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `") and line.count("|") > 5]
    header = next(line for line in text.splitlines() if line.startswith("| module |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][2:]
    marked: dict[str, set[str]] = {column: set() for column in columns}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        module = "fmnist/" + re.fullmatch(r"`(.+)`", cells[0])[1]
        for column, cell in zip(columns, cells[2:]):
            if cell == "x":
                marked[column].add(module)
    return columns, marked


def test_the_architecture_page_shows_what_each_entry_point_imports():
    columns, marked = architecture_table()
    assert columns == list(ENTRY_POINTS)
    for column, script in ENTRY_POINTS.items():
        expected = modules_of(script)
        assert marked[column] == expected, (
            f"docs/architecture.md, column {column!r}: add {sorted(expected - marked[column])}, "
            f"remove {sorted(marked[column] - expected)}")


def test_every_module_of_the_package_is_on_the_architecture_page():
    _, marked = architecture_table()
    text = (ROOT / "docs/architecture.md").read_text()
    listed = {"fmnist/" + name for name in re.findall(r"^\| `([a-z_]+\.py)` \|", text, re.M)}
    package = {str(p.relative_to(ROOT)) for p in (ROOT / "fmnist").glob("*.py")} - {"fmnist/__init__.py"}
    assert listed == package
