"""Check params.yaml before any work starts.

    errors = check_params(yaml.safe_load(open("params.yaml")))

Every key the pipeline knows is listed in SCHEMA with its type and allowed range; an
unknown key is an error too (with the closest known key suggested), so a typo can't
silently fall back to a default.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Callable

MODELS = ("cnn", "lenet")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
TRAIN_IMAGES = 60_000  # size of the training file the validation set is cut from


@dataclass(frozen=True)
class Rule:
    kind: type
    allowed: str  # how the message describes the allowed values
    ok: Callable[[Any], bool] = lambda v: True


def _int(lo: int, hi: int | None = None) -> Rule:
    text = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    return Rule(int, text, lambda v: v >= lo and (hi is None or v <= hi))


def _choice(options: tuple[str, ...]) -> Rule:
    return Rule(str, "one of " + ", ".join(options), lambda v: v in options)


def _float(lo: float, hi: float, lo_open: bool = True) -> Rule:
    bound = ">" if lo_open else ">="
    return Rule(float, f"a finite number {bound} {lo:g} and <= {hi:g}",
                lambda v: math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi)


_BOOL = Rule(bool, "true or false")

SCHEMA: dict[str, dict[str, Rule]] = {
    "data": {
        "val_size": _int(1, TRAIN_IMAGES - 1),
        "seed": _int(0),
    },
    "train": {
        "model": _choice(MODELS),
        "epochs": _int(1),
        "batch_size": _int(1),
        "optimizer": _choice(OPTIMIZERS),
        "lr": _float(0, 10),
        "momentum": _float(0, 1, lo_open=False),
        "weight_decay": _float(0, 1, lo_open=False),
        "label_smoothing": _float(0, 1, lo_open=False),
        "augment": _BOOL,
        "seed": _int(0),
        "device": _choice(DEVICES),
        "precision": _choice(PRECISIONS),
        "compile": _BOOL,
        "nproc": _int(1, 64),
        "max_restarts": _int(0, 100),
        "resume": _BOOL,
    },
    "evaluate": {
        "batch_size": _int(1),
        "tta": _BOOL,
        "misclassified": _int(0, 400),
    },
    "compare": {
        "max_accuracy_drop": _float(0, 1, lo_open=False),
    },
}


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_value(path: str, value: Any, rule: Rule) -> str | None:
    kind = type(value)
    if rule.kind is float and kind is int:  # 1 is a fine learning rate; true is not
        value, kind = float(value), float
    if kind is not rule.kind or not rule.ok(value):
        return f"{path}: got {value!r}, expected {rule.allowed}"
    return None


def check_params(params: Any) -> list[str]:
    """Return one message per problem in `params` (empty when all is well)."""
    if not isinstance(params, dict):
        return [f"params.yaml must be a mapping of sections ({', '.join(SCHEMA)}), got {type(params).__name__}"]
    errors = []
    for section, value in params.items():
        if section not in SCHEMA:
            errors.append(f"unknown section '{section}'{_suggest(str(section), list(SCHEMA))}; "
                          f"known sections: {', '.join(SCHEMA)}")
        elif not isinstance(value, dict):
            errors.append(f"{section}: expected a mapping of keys, got {value!r}")
    for section, rules in SCHEMA.items():
        given = params.get(section)
        if not isinstance(given, dict):
            if section not in params:
                errors.append(f"{section}: section missing; it needs {', '.join(rules)}")
            continue
        for key in given:
            if key not in rules:
                errors.append(f"{section}.{key}: unknown key{_suggest(str(key), list(rules))}; "
                              f"known keys: {', '.join(rules)}")
        for key, rule in rules.items():
            if key not in given:
                errors.append(f"{section}.{key}: missing; expected {rule.allowed}")
            else:
                problem = _check_value(f"{section}.{key}", given[key], rule)
                if problem:
                    errors.append(problem)
    return errors
