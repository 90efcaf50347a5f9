"""fmnist-sweep without DVC: the space file and -S checks, the study's bookkeeping, the
result table and pictures, and the one-line errors of the command (in this process)."""

from __future__ import annotations

import copy
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from conftest import ROOT, make_repo
from fmnist.errors import ParamError, run
from fmnist.search_space import inside, load_space, override_value, overrides, parse_fixed, parse_space
from fmnist.study import (
    DEFAULTS, EXPERIMENT, FAILURE, LOG, RERUN_OF, StudyLock, Worker, open_storage, open_study, plan_trials,
)
from fmnist.sweep_report import pictures, summary

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def space(text: str, fixed: dict | None = None):
    return parse_space(text, "sweep.yaml", copy.deepcopy(BASE), fixed or {})


def refused(text: str, fixed: dict | None = None) -> str:
    with pytest.raises(ParamError) as err:
        space(text, fixed)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_the_committed_space_is_valid_and_holds_the_defaults():
    config = load_space(ROOT / "sweep.yaml", copy.deepcopy(BASE), {})
    assert {"train.lr", "train.weight_decay", "train.batch_size"} <= set(config.distributions)
    assert config.distributions["train.lr"].log and config.distributions["train.weight_decay"].log
    # The first trial runs params.yaml's own values, so the table shows whether the search beat them.
    for name, d in config.distributions.items():
        section, key = name.split(".")
        assert inside(d, BASE[section][key]), name


def test_ranges_become_optuna_distributions_of_the_params_type():
    config = space("space:\n  train.lr: {low: 0.01, high: 1, log: true}\n  train.shift: {low: 0, high: 2}\n"
                   "  train.model: {choices: [cnn3, lenet]}\n  train.erase: {low: 0, high: 0.5, step: 0.1}\n")
    assert config.distributions == {
        "train.lr": FloatDistribution(0.01, 1.0, log=True), "train.shift": IntDistribution(0, 2),
        "train.model": CategoricalDistribution(["cnn3", "lenet"]), "train.erase": FloatDistribution(0, 0.5, step=0.1)}
    assert config.prune_percentile == 25 and config.prune_min_epochs == 1  # the defaults


@pytest.mark.parametrize("text, expected", [
    ("space:\n  train.lrr: {low: 0.1, high: 1}\n", "space.train.lrr: unknown param (did you mean 'train.lr'?)"),
    ("space:\n  lr: {low: 0.1, high: 1}\n", "space.lr: unknown param"),
    ("space:\n  data.val_size: {low: 100, high: 1000}\n", "data.val_size can't be searched: it changes the validation set"),
    ("space:\n  evaluate.tta: {choices: [true, false]}\n", "evaluate.tta can't be searched: it changes only the test side"),
    ("space:\n  train.nproc: {low: 1, high: 2}\n", "train.nproc can't be searched: a trial trains in one process"),
    ("space:\n  train.lr: {low: 0.1, hgih: 1}\n", "space.train.lr.hgih: unknown key (did you mean 'high'?)"),
    ("space:\n  train.lr: {low: 0.1}\n", "space.train.lr: high missing"),
    ("space:\n  train.lr: {low: 1, high: 0.1}\n", "space.train.lr: low 1 must be below high 0.1"),
    ("space:\n  train.lr: {low: 0.5, high: 0.5}\n", "use -S train.lr=VALUE"),
    ("space:\n  train.label_smoothing: {low: 0, high: 0.2, log: true}\n", "a log scale needs low above 0, got 0"),
    ("space:\n  train.shift: {low: 0.5, high: 2}\n", "space.train.shift.low: got 0.5, but the param takes integers"),
    ("space:\n  train.model: {low: 1, high: 2}\n", "train.model takes one of cnn3v2"),
    ("space:\n  train.model: {choices: [cnn3]}\n", "expected a list of at least two values"),
    ("space:\n  train.model: {choices: [cnn3, cnn3]}\n", "lists a value twice"),
    ("space:\n  train.lr: {choices: [0.1, 0.2], low: 0.1}\n", "choices and low can't go together"),
    ("space:\n  train.weight_decay: {low: 1e-5, high: 0.01}\n", "YAML reads as text: write it with a dot, as in 1.0e-5"),
    ("space:\n  train.lr: 0.1\n", "expected a range {low: ..., high: ...} or {choices: [...]}"),
    ("space: {}\n", "space: expected a mapping of params"),
    ("spaec:\n  train.lr: {low: 0.1, high: 1}\n", "expected a mapping with a 'space'"),
    ("space:\n  train.lr: {low: 0.1, high: 1}\nprunner: {}\n", "prunner: unknown key (did you mean 'pruner'?)"),
    ("space:\n  train.lr: {low: 0.1, high: 1}\npruner: {percentile: 100}\n", "pruner.percentile: got 100"),
    ("space:\n  train.lr: {low: 0.1, high: 1\n", "sweep.yaml: not valid YAML"),
])
def test_bad_space_files_are_one_line_naming_the_entry(text, expected):
    message = refused(text)
    assert message.startswith("sweep.yaml: ") and expected in message, message


@pytest.mark.parametrize("entry, end, check", [
    ("{low: 0.0, high: 0.5}", "low: 0.0 is refused", "train.lr: got 0.0, expected a finite number > 0 and <= 10"),
    ("{low: 0.1, high: 20}", "high: 20.0 is refused", "train.lr: got 20.0, expected a finite number > 0 and <= 10"),
    ("{choices: [0.1, -1]}", "choices: -1.0 is refused", "train.lr: got -1.0"),
])
def test_both_ends_of_a_range_and_every_choice_pass_the_params_checks(entry, end, check):
    message = refused(f"space:\n  train.lr: {entry}\n")
    assert f"space.train.lr.{end} by the params checks: {check}" in message, message


def test_ranges_are_checked_with_the_fixed_params_too():
    # nproc 1 takes any batch; the check of each end sees the params every trial starts from.
    message = refused("space:\n  train.momentum: {low: 0.5, high: 1.0}\n")
    assert "space.train.momentum.high: 1.0 is refused" in message and "< 1" in message


def test_a_fixed_param_leaves_the_search_and_every_fixed_is_refused():
    fixed = parse_fixed(["train.lr=0.3", "train.epochs=1", "train.weight_decay=1e-5"], BASE)
    assert fixed == {"train.lr": 0.3, "train.epochs": 1, "train.weight_decay": 1e-5}  # 1e-5: a number, as in DVC
    config = space("space:\n  train.lr: {low: 0.1, high: 1}\n  train.momentum: {low: 0.8, high: 0.95}\n", fixed)
    assert list(config.distributions) == ["train.momentum"]
    assert "every param of the space is fixed by -S" in refused("space:\n  train.lr: {low: 0.1, high: 1}\n", fixed)


@pytest.mark.parametrize("item, expected", [
    ("train.lrr=0.1", "-S train.lrr=0.1: unknown param (did you mean 'train.lr'?)"),
    ("train.epochs=0", "-S train.epochs=0: train.epochs: got 0, expected an integer >= 1"),
    ("train.epochs", "-S train.epochs: expected section.key=value"),
    ("params.yaml:train.lr=0.1", "-S params.yaml:train.lr=0.1: only params.yaml's params can be set"),
    ("train.nproc=2", "-S train.nproc=2: a sweep can't set train.nproc: a trial trains in one process"),
    ("train.resume=true", "-S train.resume=true: a sweep can't set train.resume: every trial trains afresh"),
])
def test_bad_fixed_params_are_one_line(item, expected):
    with pytest.raises(ParamError) as err:
        parse_fixed([item], BASE)
    assert str(err.value).startswith(expected), err.value


@pytest.mark.parametrize("value", [0.1, 1e-05, 2e-07, 0.12345678901234568, 3, True, False, "cnn3_small", 0.0])
def test_overrides_come_back_from_params_yaml_as_the_same_value(tmp_path, value):
    """What `dvc exp run -S` writes into params.yaml (DVC's own code), read as the stages read it."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(path), overrides({"train.lr": value}))
    read = yaml.safe_load(path.read_text())["train"]["lr"]
    assert type(read) is type(value)
    assert read == value or (isinstance(value, float) and abs(read - value) <= 1e-20 + 1e-15 * abs(value))
    assert override_value(value) != "" and "\n" not in override_value(value)


def test_inside_tells_whether_a_value_can_be_drawn():
    assert inside(FloatDistribution(0.01, 1.0, log=True), 0.2) and not inside(FloatDistribution(0.01, 1.0), 2.0)
    assert inside(IntDistribution(0, 2), 1) and not inside(IntDistribution(0, 2), 1.0)
    assert inside(CategoricalDistribution([128, 256]), 256) and not inside(CategoricalDistribution([128, 256]), 512)
    assert not inside(CategoricalDistribution([0, 1]), False)  # a bool is not the int 0 here


def trial(number: int, state=TrialState.COMPLETE, value=None, **attrs):
    t = create_trial(state=state, value=value if state == TrialState.COMPLETE else None,
                     params={"train.lr": 0.1 + number / 100}, distributions={"train.lr": FloatDistribution(0.01, 1)},
                     user_attrs={EXPERIMENT: f"sweep-{number}", **attrs},
                     intermediate_values={1: value} if value is not None else None)
    t.number = number
    return t


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


def test_the_summary_ranks_by_validation_accuracy_and_points_at_failures():
    trials = [trial(0, value=0.80, **{DEFAULTS: True, "test_acc": 0.79, "epochs": 2}),
              trial(1, value=0.85, test_acc=0.84, epochs=2),
              trial(2, TrialState.PRUNED, value=0.5, best_val_acc=0.55, epochs=1),
              trial(3, TrialState.FAIL, **{FAILURE: "error: train.device: cuda was asked for", LOG: "h:logs/sweep-3.log"}),
              trial(4, TrialState.FAIL, interrupted="the sweep was stopped")]
    lines = summary(trials, ["train.lr"])
    assert lines[0] == "trials: 2 complete, 1 pruned, 1 failed, 1 interrupted (re-run as new trials)"
    rows = [line.split() for line in lines if line[:1].isdigit()]
    assert [r[2] for r in rows] == ["sweep-1", "sweep-0", "sweep-2"]  # best first; pruned after the complete ones
    assert rows[0][4:6] == ["0.8500", "0.8400"] and rows[2][3:5] == ["pruned", "0.5500"]
    assert "best: trial 1, experiment sweep-1: validation accuracy 0.8500" in "\n".join(lines)
    assert "apply it: dvc exp apply sweep-1" in lines
    assert any(line.startswith("the defaults (trial 0, sweep-0) scored 0.8000: the best is +0.0500") for line in lines)
    assert "failed: trial 3 (sweep-3): error: train.device: cuda was asked for (log: h:logs/sweep-3.log)" in lines
    assert any(line.startswith("interrupted: trial 4 (the sweep was stopped); to be re-run") for line in lines)


def test_pictures_of_a_study(tmp_path):
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate([0.7, 0.8, 0.75, 0.9]):
        study.add_trial(create_trial(value=value, params={"train.lr": 0.1 * (i + 1), "train.shift": i % 2},
                                     distributions={"train.lr": FloatDistribution(0.01, 1),
                                                    "train.shift": IntDistribution(0, 2)}))
    written, skipped = pictures(study, tmp_path)
    assert skipped == [] and [p.name for p in written] == ["optimization_history.png", "param_importances.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    written, skipped = pictures(optuna.create_study(direction="maximize"), tmp_path / "none")
    assert written == [] and len(skipped) == 2 and "needs 1 complete trial" in skipped[0]


def test_a_study_keeps_its_space_and_fixed_params(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    lock = StudyLock(storage, url, "s")
    shared = {"baseline": "abc", "space": {"train.lr": {"low": 0.1, "high": 1.0}}, "fixed": {}}
    study, kept = open_study(storage, "s", None, None, lock, shared)
    assert kept == shared and open_study(storage, "s", None, None, lock, shared)[1] == shared
    other = {**shared, "space": {"train.lr": {"low": 0.1, "high": 2.0}}}
    with pytest.raises(ParamError, match=r"--study s began with another search space \(--space: its space, sampler or pruner\) "
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
    from fmnist.sweep import cli

    if space_text:
        (sweep_repo.path / "sweep.yaml").write_text(space_text)
    with pytest.raises(SystemExit) as exit_:
        run(lambda: cli(["--trials", "1", *args]))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1 and err.startswith(expected), err
    assert not (sweep_repo.path / ".dvc/tmp/sweep/workspaces").exists()  # refused before any work


def test_a_new_study_refuses_the_names_of_experiments_left_by_a_lost_one(sweep_repo, capsys):
    from fmnist.sweep import cli

    head = sweep_repo.run("git", "rev-parse", "HEAD").stdout.strip()
    sweep_repo.run("git", "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/sweep-0", head)
    with pytest.raises(SystemExit) as exit_:
        run(lambda: cli(["--trials", "1"]))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith("error: --study sweep: this commit already has experiments of that name (sweep-0)")
    assert "`dvc exp remove sweep-0`" in err
