"""fmnist.sweep.study: the study's bookkeeping (trials re-run after an interruption, workers, storages,
what a study keeps)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from optuna.trial import TrialState

from fmnist.core.errors import ParamError
from fmnist.sweep.study import FAILURE, RERUN_OF, StudyLock, Worker, lock_file, open_storage, open_study, plan_trials
from helpers.not_files import NOT_FILES, make_not_file
from helpers.sweeps import optuna_trial as trial


def test_interrupted_trials_are_rerun_once_and_do_not_count():
    trials = [trial(0, value=0.9), trial(1, TrialState.FAIL, **{FAILURE: "error: diverged"}),
              trial(2, TrialState.FAIL), trial(3, TrialState.FAIL), trial(4, TrialState.WAITING, **{RERUN_OF: 2}),
              trial(5, TrialState.RUNNING)]
    plan = plan_trials(trials)
    # Counted: the complete one, the one that failed of its own accord, the waiting re-run, the running one.
    assert plan.counted == 4
    assert [t.number for t in plan.reruns] == [3]  # 2 has its re-run already
    assert [t.number for t in plan.running] == [5]


def test_a_worker_is_gone_only_when_its_process_on_this_machine_has_ended():
    me = Worker.me()
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ended = int(proc.stdout)
    assert me.gone({**me.as_dict(), "pid": ended})
    assert not me.gone(me.as_dict())  # this very process
    assert not me.gone({**me.as_dict(), "pid": ended, "host": "elsewhere"})  # its heartbeat decides
    assert not me.gone({"host": me.host})


def test_a_study_keeps_its_space_and_fixed_params(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    lock = StudyLock(storage, url, "s")
    shared = {"baseline": "abc", "space": {"train.lr": {"low": 0.1, "high": 1.0}}, "fixed": {}}
    _study, kept = open_study(storage, "s", None, None, lock, shared)
    assert kept == shared and open_study(storage, "s", None, None, lock, shared)[1] == shared
    other = {**shared, "space": {"train.lr": {"low": 0.1, "high": 2.0}}}
    with pytest.raises(ParamError, match=r"--study s began with another search space "
                                         r"\(--space: its space, sampler or pruner\) "
                                         r"\(train\.lr\.high: 1\.0 then, 2\.0 now\)"):
        open_study(storage, "s", None, None, lock, other)
    with pytest.raises(ParamError, match=r"began with other -S params \(train\.epochs: None then, 1 now\)"):
        open_study(storage, "s", None, None, lock, {**shared, "fixed": {"train.epochs": 1}})


@pytest.mark.parametrize("url, expected", [
    ("mysql://me@db/x", "--storage mysql://me@db/x: expected sqlite:///PATH or postgresql://"),
    ("postgresql://me:secret@127.0.0.1:1/db", "--storage postgresql://me:***@127.0.0.1:1/db: can't be reached: "),
])
def test_storages_that_cant_be_used_are_one_line(url, expected):
    with pytest.raises(ParamError) as err:
        open_storage(url)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value) and "secret" not in str(err.value)


@pytest.mark.parametrize("kind", NOT_FILES)
@pytest.mark.parametrize("which", ["database", "its lock file"])
def test_a_sqlite_storage_that_is_not_a_file_is_refused_at_once_saying_what_it_is(kind, which, tmp_path, no_hang):
    """SQLite (or the lock file's open) would wait on a named pipe: whatever is there must be a file, or nothing."""
    database = tmp_path / "optuna.db"
    path = make_not_file(lock_file(database) if which == "its lock file" else database, kind)
    found = "a named pipe (FIFO)" if kind == "fifo" else NOT_FILES[kind]  # a pipe is refused unopened, writer or not
    with pytest.raises(ParamError) as err:
        open_storage(f"sqlite:///{database}")
    assert str(err.value) == f"{path}: {found}, not a file; --storage sqlite:///PATH names a SQLite database file"
