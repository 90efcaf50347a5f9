"""make fuzz's runner, briefly: every target fuzzed by atheris for two seconds, forked from one
process (torch imported once), from its committed seeds; no input may break the rule
(fuzz/oracle.py). Its long runs are a benchmark (docs/fuzzing.md); the committed corpus is
replayed without atheris by unit/test_fuzz.py. atheris is installed on Linux only."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from helpers import ROOT
from helpers.tools import PIP_HINT, need_module


@pytest.mark.skipif(sys.platform != "linux", reason="atheris has Linux wheels only (requirements/test.txt)")
def test_every_target_fuzzes_for_two_seconds_and_nothing_breaks_the_rule(tmp_path):
    need_module("atheris", PIP_HINT)
    proc = subprocess.run([sys.executable, "-m", "fuzz", "--seconds", "2", "--workdir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    names = subprocess.run([sys.executable, "-m", "fuzz", "--list"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\n")
    for name in filter(None, (line.split(" ")[0] for line in names)):
        runs = re.search(rf"^{name}: ([\d,]+) runs", proc.stdout, re.M)
        assert runs and int(runs[1].replace(",", "")) > 0, proc.stdout
        assert (tmp_path / name / "corpus").is_dir() and not list((tmp_path / name / "artifacts").iterdir())
