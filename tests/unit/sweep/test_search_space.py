"""fmnist.sweep.search_space: sweep.yaml and -S checked against the params checks, ranges as Optuna distributions."""

from __future__ import annotations

import copy

import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fmnist.core.errors import ParamError
from fmnist.params import value_of
from fmnist.sweep.search_space import (
    check_params,
    inside,
    load_space,
    override_value,
    overrides,
    parse_fixed,
    parse_space,
)
from helpers import ROOT
from helpers.not_files import NOT_FILES, make_not_file

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
        assert inside(d, value_of(BASE, name)), name


def test_ranges_become_optuna_distributions_of_the_params_type():
    config = space("space:\n  train.lr: {low: 0.01, high: 1, log: true}\n  train.augment.shift: {low: 0, high: 2}\n"
                   "  train.model: {choices: [cnn3, lenet]}\n  train.augment.erase: {low: 0, high: 0.5, step: 0.1}\n")
    assert config.distributions == {
        "train.lr": FloatDistribution(0.01, 1.0, log=True), "train.augment.shift": IntDistribution(0, 2),
        "train.model": CategoricalDistribution(["cnn3", "lenet"]),
        "train.augment.erase": FloatDistribution(0, 0.5, step=0.1)}
    assert config.prune_percentile == 25 and config.prune_min_epochs == 1  # the defaults


@pytest.mark.parametrize("text, expected", [
    ("space:\n  train.lrr: {low: 0.1, high: 1}\n", "space.train.lrr: unknown param (did you mean 'train.lr'?)"),
    ("space:\n  lr: {low: 0.1, high: 1}\n", "space.lr: unknown param"),
    ("space:\n  data.val_size: {low: 100, high: 1000}\n",
     "data.val_size can't be searched: it changes the validation set"),
    ("space:\n  evaluate.tta: {choices: [true, false]}\n",
     "evaluate.tta can't be searched: it changes only the test side"),
    ("space:\n  train.nproc: {low: 1, high: 2}\n", "train.nproc can't be searched: a trial trains in one process"),
    ("space:\n  train.lr: {low: 0.1, hgih: 1}\n", "space.train.lr.hgih: unknown key (did you mean 'high'?)"),
    ("space:\n  train.lr: {low: 0.1}\n", "space.train.lr: high missing"),
    ("space:\n  train.lr: {low: 1, high: 0.1}\n", "space.train.lr: low 1 must be below high 0.1"),
    ("space:\n  train.lr: {low: 0.5, high: 0.5}\n", "use -S train.lr=VALUE"),
    ("space:\n  train.label_smoothing: {low: 0, high: 0.2, log: true}\n", "a log scale needs low above 0, got 0"),
    ("space:\n  train.augment.shift: {low: 0.5, high: 2}\n",
     "space.train.augment.shift.low: got 0.5, but the param takes integers"),
    ("space:\n  train.model: {low: 1, high: 2}\n",
     "train.model takes the name of a net registered in fmnist/model/nets.py: give choices"),
    ("space:\n  train.model: {choices: [cnn3]}\n", "expected a list of at least two values"),
    ("space:\n  train.model: {choices: [cnn3, cnn3]}\n", "lists a value twice"),
    ("space:\n  train.lr: {choices: [0.1, 0.2], low: 0.1}\n", "choices and low can't go together"),
    ("space:\n  train.weight_decay: {low: 1e-5, high: 0.01}\n",
     "YAML reads as text: write it with a dot, as in 1.0e-5"),
    ("space:\n  train.lr: 0.1\n", "expected a range {low: ..., high: ...} or {choices: [...]}"),
    ("space: {}\n", "space: expected a mapping of params"),
    ("spaec:\n  train.lr: {low: 0.1, high: 1}\n", "expected a mapping with a 'space'"),
    ("space:\n  train.lr: {low: 0.1, high: 1}\nprunner: {}\n", "prunner: unknown key (did you mean 'pruner'?)"),
    ("space:\n  train.lr: {low: 0.1, high: 1}\npruner: {percentile: 100}\n", "pruner.percentile: got 100"),
    ("space:\n  train.lr: {low: 0.1, high: 1\n", "sweep.yaml: not valid YAML"),
    # Found by fuzzing (fuzz/corpus/sweep/crash-float-tag.yaml, crash-empty-float.yaml): for a tag PyYAML
    # can't construct, it raises ValueError, IndexError, KeyError or AttributeError, not a YAMLError.
    ("!!float /tuple l[[", "sweep.yaml: not valid YAML: could not convert string to float"),
    ("space:\n  train.lr: {!!float , high: 2}\n", "sweep.yaml: not valid YAML: string index out of range"),
    ("space: {train.augment: {choices: [!!bool maybe, true]}}\n", "sweep.yaml: not valid YAML: 'maybe'"),
    # Found by fuzzing (fuzz/corpus/sweep/crash-format-character.yaml): what the file holds is quoted printable.
    ("space: {train.lr: [\u06dd\n", r"not valid YAML: while parsing a flow sequence in "),
    ("space: {train.lr: [\u06dd\n", r"column 19: space: {train.lr: [\u06dd ^ expected"),
    ('space: {"train.lr\\x1b[2J": {low: 1, high: 2}}\n', r"space.train.lr\x1b[2J: unknown param"),
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


@pytest.mark.parametrize("kind", NOT_FILES)
def test_a_space_file_that_is_not_a_file_is_refused_at_once_saying_what_it_is(kind, tmp_path, no_hang):
    path = make_not_file(tmp_path / "sweep.yaml", kind)
    with pytest.raises(ParamError) as err:
        load_space(path, copy.deepcopy(BASE), {})
    assert str(err.value) == f"{path}: {NOT_FILES[kind]}, not a file; name the search space with --space FILE"


def test_a_space_file_too_long_or_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_bytes(b"space:\n  train.lr: {low: 0.1, high: 0.5}\n" + b"#" * 1_000_000)
    with pytest.raises(ParamError, match=f"^{path}: 1,000,041 bytes \\(1.0 MB\\), larger than a search space "
                                         r"\(a few lines\) can be \(the limit is 1,000,000 bytes \(1.0 MB\)\); name"):
        load_space(path, copy.deepcopy(BASE), {})
    path.write_bytes(b"space:\n  train.lr: {low: 0.1, high: 0.5}  # \xe9\n")
    with pytest.raises(ParamError, match=f"^{path}: not UTF-8 text \\(byte 44 is 0xe9\\); name"):
        load_space(path, copy.deepcopy(BASE), {})


def test_a_trial_s_unregistered_net_is_listed_with_its_other_problems():
    """The sweep checks what the train stage would, every problem at once: the net among the rest."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(model="resnet", lr=-1)
    errors = check_params(params)
    assert len(errors) == 2 and errors[0].startswith("train.model: got 'resnet'") and errors[1].startswith("train.lr")
