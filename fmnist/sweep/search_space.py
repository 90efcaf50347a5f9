"""The search space of `fmnist-sweep` (sweep.yaml), read and checked before any trial runs.

    base = yaml.safe_load(params_text)                # params.yaml as the trials get it
    fixed = parse_fixed(["train.epochs=1"], base)      # -S: a value for every trial
    config = load_space(Path("sweep.yaml"), base, fixed)
    trial = study.ask(config.distributions)           # Optuna draws every param at once
    overrides(trial.params | fixed)                    # ["train.lr=0.1234", ...] for `dvc exp run -S`

sweep.yaml names params of params.yaml (`section.key`, as `-S` does) with a range or a
list of choices each, and how the sampler and the pruner behave:

    space:
      train.lr: {low: 0.02, high: 0.8, log: true}   # floats; log: drawn evenly on a log scale
      train.augment.shift: {low: 0, high: 2}                # an integer param gets integers
      train.batch_size: {choices: [128, 256, 512]}  # one of these
    sampler: {seed: 0, startup_trials: 6}
    pruner: {percentile: 25, startup_trials: 4, min_epochs: 1}

Every problem is a ParamError of one line naming the file and the entry: an unknown
param (with the closest known one suggested), a param that can't be searched, a range
whose ends (each checked, as are all choices) fmnist.params.check_params would refuse.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fmnist.core.errors import DataError, ParamError, did_you_mean, flat, printable, shown
from fmnist.core.io import read_text_bounded
from fmnist.model.nets import name_problem
from fmnist.params import allowed, kind_of, leaves, with_value
from fmnist.params import check_params as check_values

SPACE_FILE = "sweep.yaml"
MAX_BYTES = 1_000_000  # a space file is a few lines; refuse to decode anything far larger

# Params a search must not vary, and why: the objective is validation accuracy, so a param
# that changes the validation set, or only the test side, or nothing at all, has no place.
NOT_SEARCHABLE = {
    "data": "it changes the validation set the trials are scored on, so their scores would not compare",
    "evaluate": "it changes only the test side, not validation accuracy, the objective",
    "compare": "it is not a training param",
    "train.device": "it changes where a trial trains, not what it learns",
    "train.compile": "it changes how fast a trial trains, not what it learns",
    "train.max_restarts": "it only matters to a run that fails",
    "train.resume": "every trial trains afresh",
    "train.nproc": "a trial trains in one process; --jobs runs several trials at once",
}
RANGE_KEYS = ("low", "high", "log", "step")
TOP_KEYS = ("space", "sampler", "pruner")
SAMPLER_KEYS = {"seed": 0, "startup_trials": 6}
PRUNER_KEYS = {"percentile": 25.0, "startup_trials": 4, "min_epochs": 1}


@dataclass(frozen=True)
class SweepConfig:
    distributions: dict[str, BaseDistribution]  # "train.lr" -> what Optuna draws it from
    seed: int                # the sampler's seed: the same sweep draws the same first trials
    startup_trials: int      # trials drawn at random before TPE models the results
    prune_percentile: float  # a trial below this percentile of the others after an epoch is stopped
    prune_startup_trials: int  # trials that always finish before any is pruned
    prune_min_epochs: int  # the first epoch after which a trial can be pruned

    def as_dict(self) -> dict:
        """A plain description, stored with the study so that a resumed sweep can check it is the same."""
        return {"space": {name: describe(d) for name, d in self.distributions.items()},
                "sampler": {"seed": self.seed, "startup_trials": self.startup_trials},
                "pruner": {"percentile": self.prune_percentile, "startup_trials": self.prune_startup_trials,
                           "min_epochs": self.prune_min_epochs}}


def describe(d: BaseDistribution) -> dict:
    if isinstance(d, CategoricalDistribution):
        return {"choices": list(d.choices)}
    out = {"low": d.low, "high": d.high}
    if d.log:
        out["log"] = True
    if d.step is not None and not (isinstance(d, IntDistribution) and d.step == 1):
        out["step"] = d.step
    return out


def _name(key: Any) -> str:
    """A key of the file as a message shows it: on one printable line, at most 40 characters."""
    return printable(flat(key, 40))


def check_params(params: Any) -> list[str]:
    """params.yaml's checks, train.model's against the registered nets (fmnist/model/nets.py)
    among them: a trial's params must train, so the sweep checks what the train stage would."""
    return check_values(params, name_problem)


def known_params() -> list[str]:
    return list(leaves())


def _refused(params: dict, name: str, value: Any) -> str | None:
    """What the params checks say about `name` = `value` on top of `params`, or None."""
    errors = check_params(with_value(params, name, value))
    return errors[0] if errors else None


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-5: a float to DVC (Hydra), text to YAML 1.1


def parse_value(text: str) -> Any:
    """A -S value as DVC reads it: YAML scalars (1, 0.1, true, cnn3), 1e-5 a float too, else the text."""
    if _FLOAT.fullmatch(text):
        return float(text)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (bool, int, float, str)) else text


def parse_fixed(items: list[str], base: dict) -> dict[str, Any]:
    """`-S section.key=value` items as {"section.key": value}, each checked on top of `base`."""
    known, fixed = known_params(), {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParamError(f"-S {item}: expected section.key=value, e.g. -S train.epochs=1")
        if ":" in name:
            raise ParamError(f"-S {item}: only params.yaml's params can be set (no file: prefix)")
        if name not in known:
            raise ParamError(f"-S {item}: unknown param{did_you_mean(name, known)}")
        value = parse_value(text.strip())
        if (name, value) in (("train.resume", True),) or (name == "train.nproc" and value != 1):
            raise ParamError(f"-S {item}: a sweep can't set {name}: {NOT_SEARCHABLE[name]}")
        fixed[name] = value
    params = base
    for name, value in fixed.items():
        params = with_value(params, name, value)
    errors = check_params(params)
    if errors:
        raise ParamError(f"-S {', '.join(items)}: {errors[0]}")
    return fixed


def with_fixed(base: dict, fixed: dict[str, Any]) -> dict:
    params = base
    for name, value in fixed.items():
        params = with_value(params, name, value)
    return params


def _number(where: str, value: Any, integer: bool) -> int | float:
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        raise ParamError(f"{where}: got {shown(value)}, which YAML reads as text: write it with a dot, "
                         f"as in {float(value):.1e}".replace("e-0", "e-").replace("e+0", "e+"))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(f"{where}: got {shown(value)}, expected {'an integer' if integer else 'a number'}")
    if integer and not isinstance(value, int):
        raise ParamError(f"{where}: got {shown(value)}, but the param takes integers")
    return value if integer else float(value)


def _dimension(where: str, name: str, entry: Any, kind: type, params: dict) -> BaseDistribution:
    if not isinstance(entry, dict):
        raise ParamError(f"{where}: expected a range {{low: ..., high: ...}} or {{choices: [...]}}, "
                         f"got {shown(entry)}")
    for key in entry:
        if key not in (*RANGE_KEYS, "choices"):
            raise ParamError(f"{where}.{_name(key)}: unknown key{did_you_mean(str(key), [*RANGE_KEYS, 'choices'])}; "
                             f"known keys: {', '.join((*RANGE_KEYS, 'choices'))}")
    if "choices" in entry:
        extra = [k for k in entry if k != "choices"]
        if extra:
            raise ParamError(f"{where}: choices and {extra[0]} can't go together: give either choices or a range")
        choices = entry["choices"]
        if not isinstance(choices, list) or len(choices) < 2:
            raise ParamError(f"{where}.choices: expected a list of at least two values, got {shown(choices)} "
                             f"(to fix one value for every trial, use -S {name}=VALUE)")
        if len({repr(c) for c in choices}) < len(choices):
            raise ParamError(f"{where}.choices: {shown(choices)} lists a value twice")
        if kind is float:  # 1 is a fine learning rate, as in params.yaml
            choices = [float(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in choices]
        for choice in choices:
            problem = _refused(params, name, choice)
            if problem:
                raise ParamError(f"{where}.choices: {shown(choice)} is refused by the params checks: {problem}")
        return CategoricalDistribution(choices)
    if kind not in (int, float):
        raise ParamError(f"{where}: {name} takes {allowed(name)}: "
                         f"give choices: [...], not a range")
    missing = [k for k in ("low", "high") if k not in entry]
    if missing:
        raise ParamError(f"{where}: {missing[0]} missing; a range needs low and high (or give choices)")
    integer = kind is int
    low = _number(f"{where}.low", entry["low"], integer)
    high = _number(f"{where}.high", entry["high"], integer)
    for end, value in (("low", low), ("high", high)):
        problem = _refused(params, name, value)
        if problem:
            raise ParamError(f"{where}.{end}: {shown(value)} is refused by the params checks: {problem}")
    if not low < high:
        raise ParamError(f"{where}: low {low:g} must be below high {high:g} "
                         f"(to fix one value for every trial, use -S {name}=VALUE)")
    log = entry.get("log", False)
    if not isinstance(log, bool):
        raise ParamError(f"{where}.log: got {shown(log)}, expected true or false")
    if log and low <= 0:
        raise ParamError(f"{where}: a log scale needs low above 0, got {low:g}")
    step = entry.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, integer)
        if step <= 0 or step > high - low:
            raise ParamError(f"{where}.step: got {step:g}, expected above 0 and at most high - low = {high - low:g}")
        if log:
            raise ParamError(f"{where}: step and log can't go together (Optuna draws a log scale continuously)")
    if integer:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


def _settings(path: str, section: str, given: Any, defaults: dict) -> dict:
    if given is None:
        return dict(defaults)
    if not isinstance(given, dict):
        raise ParamError(f"{path}: {section}: expected a mapping, got {shown(given)}")
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise ParamError(f"{path}: {section}.{_name(key)}: unknown key{did_you_mean(str(key), list(defaults))}; "
                             f"known keys: {', '.join(defaults)}")
        if key == "percentile":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 100:
                raise ParamError(f"{path}: {section}.{key}: got {shown(value)}, "
                                 f"expected a number above 0 and below 100")
            out[key] = float(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ParamError(f"{path}: {section}.{key}: got {shown(value)}, expected an integer >= 0")
        else:
            out[key] = value
    return out


def parse_space(text: str, path: str, base: dict, fixed: dict[str, Any]) -> SweepConfig:
    """The SweepConfig of a space file's text; `base` and `fixed` are the params every trial starts from.

    A param `fixed` sets (with -S) is left out of the search: every trial gets that value.
    """
    try:
        doc = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - YAMLError, RecursionError, and what PyYAML's constructors raise
        # for a tag they can't build (`!!float x` ValueError, `!!float` IndexError, `!!bool x` KeyError)
        reason = printable(flat(exc, 160))  # PyYAML quotes the line, any character in it
        raise ParamError(f"{path}: not valid YAML: {reason}") from None
    if not isinstance(doc, dict) or "space" not in doc:
        raise ParamError(f"{path}: expected a mapping with a 'space' of params to search, got {shown(doc)}")
    for key in doc:
        if key not in TOP_KEYS:
            raise ParamError(f"{path}: {_name(key)}: unknown key{did_you_mean(str(key), list(TOP_KEYS))}; "
                             f"known keys: {', '.join(TOP_KEYS)}")
    space = doc["space"]
    if not isinstance(space, dict) or not space:
        raise ParamError(f"{path}: space: expected a mapping of params (e.g. train.lr: {{low: 0.02, high: 0.8}}), "
                         f"got {shown(space)}")
    params = with_fixed(base, fixed)
    known = known_params()
    distributions = {}
    for name, entry in space.items():
        where = f"{path}: space.{_name(name)}"
        if not isinstance(name, str) or name not in known:
            raise ParamError(f"{where}: unknown param{did_you_mean(str(name), known)}; params are dotted names "
                             f"(train.augment.shift), as -S names them")
        reason = NOT_SEARCHABLE.get(name) or NOT_SEARCHABLE.get(name.split(".")[0])
        if reason:
            raise ParamError(f"{where}: {name} can't be searched: {reason}")
        if name in fixed:
            continue  # -S wins, as with `dvc exp run -S`
        distributions[name] = _dimension(where, name, entry, kind_of(name), params)
    if not distributions:
        raise ParamError(f"{path}: every param of the space is fixed by -S: nothing left to search")
    sampler = _settings(path, "sampler", doc.get("sampler"), SAMPLER_KEYS)
    pruner = _settings(path, "pruner", doc.get("pruner"), PRUNER_KEYS)
    return SweepConfig(distributions, sampler["seed"], sampler["startup_trials"], pruner["percentile"],
                       pruner["startup_trials"], pruner["min_epochs"])


def load_space(path: Path, base: dict, fixed: dict[str, Any]) -> SweepConfig:
    """The checked SweepConfig of the space file `path` (sweep.yaml, or --space FILE; `-` is
    standard input). ParamError, in one line naming it, for what is not a short UTF-8 file:
    missing, a folder, a device, a named pipe with no writer, larger than MAX_BYTES."""
    try:
        text = read_text_bounded(path, MAX_BYTES, "a search space (a few lines)",
                                 "name the search space with --space FILE")
    except DataError as exc:
        raise ParamError(str(exc)) from None
    return parse_space(text, str(path), base, fixed)


def inside(d: BaseDistribution, value: Any) -> bool:
    """Whether `value` is one Optuna could draw from `d` (the defaults trial is run only then)."""
    if isinstance(d, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in d.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(d, IntDistribution) and not isinstance(value, int):
        return False
    if not d.low <= value <= d.high:
        return False
    return d.step is None or math.isclose((value - d.low) / d.step, round((value - d.low) / d.step))


def override_value(value: Any) -> str:
    """`value` as the text of a `dvc exp run -S` override that comes back as the same value.

    DVC writes floats into params.yaml as Python prints them, and a float Python prints
    with an exponent but no dot (1e-05) is a string to a YAML 1.1 reader (PyYAML, which
    the stages use): such a value is moved to the next float up, which prints with a dot.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        while "e" in repr(value) and "." not in repr(value):
            value = math.nextafter(value, math.inf)
        return repr(value)
    return str(value)


def overrides(params: dict[str, Any]) -> list[str]:
    return [f"{name}={override_value(value)}" for name, value in params.items()]
