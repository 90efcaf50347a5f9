"""fuzz/: every committed corpus file through the oracle, and the oracle itself (no atheris).

The fuzzer's own short run of every target is e2e/test_fuzz.py; docs/fuzzing.md says
how to run it for longer. Each input a fuzzing run found that broke the rule is a
corpus file (crash-*, timeout-*, oom-*) replayed here, with a focused test beside the
code it fixed.
"""

from __future__ import annotations

import sys

import pytest

from helpers import ROOT

if str(ROOT) not in sys.path:  # fuzz/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from fuzz.__main__ import corpus_files, replay
from fuzz.oracle import Broken, check, message_problem
from fuzz.targets import TARGETS


@pytest.mark.parametrize("name", TARGETS)
def test_every_corpus_file_gives_a_result_or_a_one_line_error(name, tmp_path):
    """Valid seeds give a result; damaged ones and what fuzzing found, a result or the project's error."""
    target = TARGETS[name]
    files = corpus_files(target)
    counts, problems = replay(target, files, tmp_path)
    assert not problems, "\n".join(problems)
    kinds = {path.name.split("-")[0] for path in files}
    assert {"valid", "damaged"} <= kinds, f"{target.seeds}: a few valid and a few damaged seeds (python -m fuzz.seeds)"
    assert counts["result"] >= sum(path.name.startswith("valid-") for path in files)


def test_the_seed_corpus_is_small():
    for target in TARGETS.values():
        sizes = {path.name: path.stat().st_size for path in corpus_files(target)}
        assert sum(sizes.values()) < 100_000 and max(sizes.values()) < 20_000, (target.name, sizes)


def test_every_target_has_its_seeds_written_by_fuzz_seeds():
    from fuzz.seeds import SEEDS

    assert list(SEEDS) == list(TARGETS)


@pytest.mark.parametrize("message", [
    "data/raw/train-labels-idx1-ubyte: label 12 at position 4, expected 0-9",
    "params.yaml has 2 problems:\n  train.lr: got -1, expected a number\n  train.epochs: got 0, expected 1 or more",
])
def test_the_oracle_takes_the_projects_messages(message):
    assert message_problem(message) is None


@pytest.mark.parametrize("message, problem", [
    ("", "is empty"),
    ("first line\nsecond line", "spans 2 lines"),
    ("params.yaml has 3 problems:\n  a\n  b", "spans 3 lines"),
    ("a bell \x07 in it", "unprintable"),
    ("x" * 1001, "1,001 characters long"),
])
def test_the_oracle_refuses_other_messages(message, problem):
    assert problem in message_problem(message)


def test_an_exception_other_than_the_projects_error_breaks_the_rule(tmp_path):
    def read(path):
        raise KeyError("train")

    broken = type(TARGETS["params"])("params", "a reader with a bug", "params.yaml", read)
    with pytest.raises(Broken, match="KeyError is not the project's error"):
        check(broken, b"train: {}\n", tmp_path)
