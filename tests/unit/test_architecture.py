"""The map of the package: the folders are the architecture. dvc.yaml's code deps are the
package's folders and single files, each run whole by its stage; docs/architecture.md
agrees with the imports."""

from __future__ import annotations

import ast
import re

import yaml

from helpers import ROOT
from helpers.import_map import imports

# docs/architecture.md's columns: the entry point each one is.
ENTRY_POINTS = {
    "download": "stages/download.py", "prepare": "stages/prepare.py", "train": "stages/train.py",
    "evaluate": "stages/evaluate.py", "export": "stages/export.py", "fmnist-predict": "fmnist/serve/predict.py",
    "make compare": "scripts/compare.py", "make bench": "bench/bench.py", "fmnist-sweep": "fmnist/sweep/cli.py",
}
SUBPACKAGES = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "fmnist").glob("*/__init__.py"))


def modules_of(script: str) -> set[str]:
    """The package's modules `script` runs (a module of the package counts itself), without __init__.py."""
    used = imports(ROOT / script) | ({script} if script.startswith("fmnist/") else set())
    return {path for path in used if path.startswith("fmnist/") and not path.endswith("__init__.py")}


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.startswith(("fmnist", "stages/"))}


def folder_files(folder: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py")}


def stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_lists_the_code_each_stage_runs_by_folder_or_file():
    for name, stage in stages().items():
        script = f"stages/{name}.py"
        deps = code_deps(stage)
        assert script in deps
        covered = set().union(*(folder_files(d) if (ROOT / d).is_dir() else {d} for d in deps))
        run = imports(ROOT / script) | {script}
        assert run <= covered, f"{name}: dvc.yaml misses {sorted(run - covered)}"
        # A folder or file the stage doesn't run would rerun it for edits that can't change its work.
        assert covered <= run, f"{name}: dvc.yaml lists code it never runs: {sorted(covered - run)}"


def test_a_folder_a_stage_depends_on_holds_only_modules_that_stage_runs():
    for name, stage in stages().items():
        run = imports(ROOT / f"stages/{name}.py")
        for folder in (d for d in code_deps(stage) if (ROOT / d).is_dir()):
            unused = folder_files(folder) - run
            assert not unused, f"{name} depends on {folder}/ but never runs {sorted(unused)}: move them out"


def test_stages_depend_on_folders_not_on_the_files_inside_them():
    for name, stage in stages().items():
        for dep in code_deps(stage):
            assert not any(dep.startswith(f"{folder}/") for folder in SUBPACKAGES), (name, dep)


def test_subpackage_init_files_hold_a_docstring_and_no_imports():
    for folder in SUBPACKAGES:
        tree = ast.parse((ROOT / folder / "__init__.py").read_text())
        assert ast.get_docstring(tree), folder
        assert [type(node) for node in tree.body] == [ast.Expr], f"{folder}/__init__.py holds more than a docstring"


def test_the_download_stage_reads_no_params_and_runs_no_model_or_training_code():
    stage = stages()["download"]
    assert "params" not in stage
    assert not {m for m in modules_of("stages/download.py")
                if m.startswith(("fmnist/model/", "fmnist/training/")) or m == "fmnist/params.py"}


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
        for column, cell in zip(columns, cells[2:], strict=True):
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
    text = (ROOT / "docs/architecture.md").read_text()
    listed = {"fmnist/" + name for name in re.findall(r"^\| `(?!fmnist/)([a-z_/]+\.py)` \|", text, re.M)}
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "fmnist").rglob("*.py")
               if p.name != "__init__.py"}
    assert listed == package


def test_stage_scripts_are_thin_a_main_of_forty_lines_at_most():
    for script in sorted((ROOT / "stages").glob("*.py")):
        tree = ast.parse(script.read_text())
        main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
        length = main.end_lineno - main.lineno + 1
        assert length <= 40, f"{script.name}: main is {length} lines; move the work into the package"
