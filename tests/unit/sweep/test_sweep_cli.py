"""fmnist-sweep (fmnist.sweep.cli) refuses bad input in one line, before any work (in this process, no DVC run)."""

from __future__ import annotations

import pytest

from fmnist.core.errors import run
from helpers.repos import make_repo


@pytest.fixture
def sweep_repo(tmp_path, tiny_raw, monkeypatch):
    repo = make_repo(tmp_path / "repo", tiny_raw)
    (repo.path / "sweep.yaml").write_text("space:\n  train.lr: {low: 0.01, high: 0.1, log: true}\n")
    repo.commit("space")
    monkeypatch.chdir(repo.path)
    return repo


@pytest.mark.parametrize("space_text, args, expected", [
    ("space:\n  train.lrr: {low: 0.01, high: 0.1}\n", [],
     "error: sweep.yaml: space.train.lrr: unknown param (did you mean 'train.lr'?)"),
    ("space:\n  train.lr: {low: 0.01, high: 11}\n", [],
     "error: sweep.yaml: space.train.lr.high: 11.0 is refused by the params checks: train.lr: got 11.0"),
    (None, ["--storage", "postgresql://me@127.0.0.1:1/sweeps"],
     "error: --storage postgresql://me@127.0.0.1:1/sweeps: can't be reached: "),
    (None, ["-S", "train.epochs=0"], "error: -S train.epochs=0: train.epochs: got 0, expected an integer >= 1"),
])
def test_the_command_refuses_bad_input_in_one_line(sweep_repo, capsys, space_text, args, expected):
    from fmnist.sweep.cli import cli

    if space_text:
        (sweep_repo.path / "sweep.yaml").write_text(space_text)
    with pytest.raises(SystemExit) as exit_:
        run(lambda: cli(["--trials", "1", *args]))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and err.startswith(expected), err
    assert not (sweep_repo.path / ".dvc/tmp/sweep/workspaces").exists()  # refused before any work


def test_a_new_study_refuses_the_names_of_experiments_left_by_a_lost_one(sweep_repo, capsys):
    from fmnist.sweep.cli import cli

    head = sweep_repo.run("git", "rev-parse", "HEAD").stdout.strip()
    sweep_repo.run("git", "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/sweep-0", head)
    with pytest.raises(SystemExit) as exit_:
        run(lambda: cli(["--trials", "1"]))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: --study sweep: this commit already has experiments of that name (sweep-0)")
    assert "`dvc exp remove sweep-0`" in err
