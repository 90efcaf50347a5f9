"""`dvc repro` reruns only what a change touches: edit one file of a scratch copy of the
pipeline, ask `dvc status` which stages it marks.

The files are found by what they define (the function or class that holds the concept),
not by their names, so the table holds whatever the modules end up being called.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from helpers import ROOT
from helpers.repos import reproduced_repo, set_params

# Its tests share a module fixture that takes a minute to build: one worker builds it, once
# (pyproject.toml runs pytest with --dist loadgroup).
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("stage_deps")]

STAGES = {"download", "prepare", "train", "evaluate", "export"}
# concept: (a definition that holds it, the stages an edit may mark, the stages it must mark)
EDITS = {
    "the download": (r"def fetch_raw\(", {"download", "prepare"}, {"download"}),
    "the raw-format reader": (r"def parse_idx\(", {"download", "prepare"}, {"download", "prepare"}),
    "what every stage needs": (r"def did_you_mean\(", STAGES, STAGES),
    "the params model": (r"^class Train\(", {"prepare", "train", "evaluate", "export"},
                         {"prepare", "train", "evaluate", "export"}),
    "the network's definition": (r"^def register\(", {"train", "evaluate", "export"},
                                 {"train", "evaluate", "export"}),
    "the training loop": (r"def train_epoch\(", {"train"}, {"train"}),
    "the optimiser and schedule": (r"def make_optimizer\(", {"train"}, {"train"}),
    "the moving average": (r"class Ema\b", {"train"}, {"train"}),
    "distributed training": (r"def init_distributed\(", {"train"}, {"train"}),
    "checkpoints": (r"def checkpoint_state\(", {"train"}, {"train"}),
    "augmentation": (r"^class Augmentation\b", {"train"}, {"train"}),
    "what a run records": (r"^class Record\b", {"train"}, {"train"}),
    "the test metrics": (r"def per_class_table\(", {"evaluate"}, {"evaluate"}),
    "the ONNX graph": (r"def onnx_bytes\(", {"export"}, {"export"}),
    "fmnist-predict": (r"def print_card\(", set(), set()),
    "fmnist-sweep": (r"def run_trials\(", set(), set()),
    "the picture reader": (r"def to_fashion_mnist\(", set(), set()),
    "the comparison report": (r"def render_markdown\(", set(), set()),
    "git and DVC look-ups": (r"def git_commit\(", set(), set()),
}
PARAM_EDITS = {
    "data.seed": ({"data": {"seed": 1}}, {"prepare"}),
    "train.lr": ({"train": {"lr": 0.01}}, {"train"}),
    "evaluate.tta": ({"evaluate": {"tta": False}}, {"evaluate", "export"}),
    "evaluate.batch_size": ({"evaluate": {"batch_size": 32}}, {"evaluate"}),
}


def defining_file(pattern: str) -> str:
    """The one file of the package or the scripts that defines `pattern` (a regex)."""
    found = [str(path.relative_to(ROOT)) for folder in ("fmnist", "stages", "scripts")
             for path in sorted((ROOT / folder).rglob("*.py")) if re.search(pattern, path.read_text(), re.M)]
    assert len(found) == 1, (pattern, found)
    return found[0]


def marked(repo) -> set[str]:
    """The stages `dvc status` lists (changed deps, params or outputs)."""
    status = json.loads(repo.dvc("status", "--json").stdout)
    assert set(status) <= STAGES, status
    return set(status)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """The pipeline reproduced and committed in a scratch repo: `dvc status` says nothing."""
    repo = reproduced_repo(tmp_path_factory.mktemp("deps"))
    assert marked(repo) == set()
    return repo


@pytest.mark.parametrize("concept", EDITS)
def test_a_one_line_edit_marks_only_the_stages_whose_work_it_can_change(reproduced, concept):
    pattern, allowed, required = EDITS[concept]
    path = reproduced.path / defining_file(pattern)
    try:
        path.write_text(path.read_text() + "# a one-line edit\n")
        stages = marked(reproduced)
    finally:
        reproduced.run("git", "checkout", "--", ".")
    assert required <= stages <= allowed, f"editing {concept} ({path.name}) marks {sorted(stages)}"


@pytest.mark.parametrize("param", PARAM_EDITS)
def test_a_param_marks_only_the_stages_that_read_it(reproduced, param):
    overrides, expected = PARAM_EDITS[param]
    try:
        set_params(reproduced.path, overrides)
        stages = marked(reproduced)
    finally:
        reproduced.run("git", "checkout", "--", ".")
    assert stages == expected, f"changing {param} marks {sorted(stages)}"


def test_a_new_runtime_package_reruns_the_stages_it_can_change_and_a_test_package_none(reproduced):
    repo = reproduced
    shutil.copytree(ROOT / "scripts", repo.path / "scripts", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)

    def relock(path: str, old: str, new: str) -> None:
        """What `make lock` does after a new release: that pin changes, runtime-versions.txt follows."""
        file = repo.path / path
        assert old in file.read_text()
        file.write_text(file.read_text().replace(old, new))
        repo.run(sys.executable, "scripts/lock.py", "--versions")

    try:
        relock("requirements/test.txt", "\npytest==", "\npytest==0.0.1+")
        assert marked(repo) == set()
        assert "Running stage" not in repo.dvc("repro", "--dry").stdout

        pin = next(line for line in (repo.path / "requirements/runtime.txt").read_text().splitlines()
                   if line.startswith("onnxscript=="))
        relock("requirements/runtime.txt", pin, pin.replace("==", "==99.").replace(" \\", "") + " \\")
        assert marked(repo) == {"prepare", "train", "evaluate", "export"}
        assert "requirements/runtime-versions.txt" in repo.dvc("status").stdout
        dry = repo.dvc("repro", "--dry").stdout
        assert [s for s in ("download", "prepare", "train", "evaluate", "export") if f"Running stage '{s}'" in dry] \
            == ["prepare", "train", "evaluate", "export"], dry
    finally:
        repo.run("git", "checkout", "--", ".")
