"""params.yaml, the one source of settings: read it and check every key before any work starts.

    params = load_params()            # the whole file, checked; ParamError lists every problem
    errors = check_params(mapping)    # the same checks on a mapping, one message per problem

Every key the pipeline knows is listed in SCHEMA with its type and allowed range; an
unknown key is an error too (with the closest known key suggested), so a typo can't
silently fall back to a default. Values that are each fine but can't train together
(more processes than training images, say) are refused too: see `size_problems`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from fmnist.core.dataset import OFFICIAL_COUNTS
from fmnist.core.errors import ParamError, one_line, printable, reason, shown

PARAMS_FILE = "params.yaml"
# train.model names one of the nets of fmnist.model.nets (its ARCHITECTURES; a test keeps the
# two lists equal). Named here rather than imported, so that editing a net's definition
# doesn't make the stages that only read params (prepare) rerun.
MODELS = ("cnn3v2", "cnn6", "cnn3", "cnn3_small", "cnn", "lenet")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
TRAIN_IMAGES = OFFICIAL_COUNTS["train"]  # size of the training file the validation set is cut from
SEED_MAX = 2**32 - 1  # numpy's global seed (seeded from train.seed) takes no more


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


def _float(lo: float, hi: float, lo_open: bool = True, hi_open: bool = False) -> Rule:
    low, high = (">" if lo_open else ">="), ("<" if hi_open else "<=")
    return Rule(float, f"a finite number {low} {lo:g} and {high} {hi:g}",
                lambda v: math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))


_BOOL = Rule(bool, "true or false")

SCHEMA: dict[str, dict[str, Rule]] = {
    "data": {
        "val_size": _int(1, TRAIN_IMAGES - 1),
        "seed": _int(0, SEED_MAX),
    },
    "train": {
        "model": _choice(MODELS),
        "epochs": _int(1),
        "batch_size": _int(1),
        "optimizer": _choice(OPTIMIZERS),
        "lr": _float(0, 10),
        "momentum": _float(0, 1, lo_open=False, hi_open=True),  # AdamW's beta1 must be < 1
        "weight_decay": _float(0, 1, lo_open=False),
        "label_smoothing": _float(0, 1, lo_open=False),
        "augment": _BOOL,
        "shift": _int(0, 8),
        "erase": _float(0, 1, lo_open=False),
        "ema": _float(0, 0.9999, lo_open=False),
        "seed": _int(0, SEED_MAX),
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
        return f"{path}: got {shown(value)}, expected {rule.allowed}"
    return None


def val_size_problem(images: int, val_size: int, source: str = "Fashion-MNIST") -> str | None:
    """Why `val_size` validation images can't be held out of `images` (what `source` has), or None."""
    if val_size < 1:
        return f"data.val_size: got {val_size}, but at least one validation image is needed to pick the best epoch"
    if val_size >= images:
        return (f"data.val_size: got {val_size}, but {source} has {images} training images; "
                f"at most {images - 1} can be held out for validation")
    return None


def size_problems(images: int, val_size: int, batch_size: int, nproc: int, source: str = "Fashion-MNIST") -> list[str]:
    """Why `val_size`, `batch_size` and `nproc` can't train on `images` training images
    (what `source` has), one line each; empty when they can.

    Any other combination trains: every one of the `nproc` processes takes an equal
    shard of the images left after the validation split, at least one, in batches of
    batch_size // nproc images, at least one, a short last batch included.
    """
    problems = [val_size_problem(images, val_size, source)]
    if problems[0] is None and images - val_size < nproc:
        problems.append(f"train.nproc: got {nproc}, but {source} has {images} training images and data.val_size "
                        f"holds out {val_size}, leaving {images - val_size}: fewer than one per process; "
                        f"lower train.nproc or data.val_size")
    if batch_size < nproc:
        problems.append(f"train.batch_size: got {batch_size}, but each of the train.nproc {nproc} processes "
                        f"takes batch_size / nproc images a step: it must be at least {nproc}")
    return [p for p in problems if p]


def check_params(params: Any) -> list[str]:
    """Return one message per problem in `params` (empty when all is well)."""
    if not isinstance(params, dict):
        return [f"expected a mapping of sections ({', '.join(SCHEMA)}) at the top, got {shown(params)}"]
    errors = []
    for section, value in params.items():
        if section not in SCHEMA:
            errors.append(f"unknown section {shown(section, 40)}{_suggest(str(section), list(SCHEMA))}; "
                          f"known sections: {', '.join(SCHEMA)}")
        elif not isinstance(value, dict):
            errors.append(f"{section}: expected a mapping of keys, got {shown(value)}")
    for section, rules in SCHEMA.items():
        given = params.get(section)
        if not isinstance(given, dict):
            if section not in params:
                errors.append(f"{section}: section missing; it needs {', '.join(rules)}")
            continue
        for key in given:
            if key not in rules:
                name = printable(" ".join(str(key).split())[:40])
                errors.append(f"{section}.{name}: unknown key{_suggest(str(key), list(rules))}; "
                              f"known keys: {', '.join(rules)}")
        for key, rule in rules.items():
            if key not in given:
                errors.append(f"{section}.{key}: missing; expected {rule.allowed}")
            else:
                problem = _check_value(f"{section}.{key}", given[key], rule)
                if problem:
                    errors.append(problem)
    if not errors:  # each value is fine on its own: do they train together?
        errors = size_problems(TRAIN_IMAGES, params["data"]["val_size"], params["train"]["batch_size"],
                               params["train"]["nproc"])
    return errors


def load_params(path: str | Path = PARAMS_FILE) -> dict:
    """Read and check the whole params file; raise ParamError listing every problem."""
    try:
        params = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found; run from the repository's top folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamError(f"{path}: cannot be read as text ({reason(exc)}); restore it with "
                         f"`git checkout {path}`") from None
    except Exception as exc:  # noqa: BLE001 - YAMLError; RecursionError (deep nesting); what PyYAML's constructors
        # raise for a tag they can't build (`!!float x` ValueError, `!!float` IndexError, `!!bool x` KeyError)
        raise ParamError(f"{path}: not valid YAML: {one_line(exc)}; fix it or restore it with "
                         f"`git checkout {path}`") from None
    if params is None:
        raise ParamError(f"{path}: the file is empty; restore it with `git checkout {path}`")
    errors = check_params(params)
    if len(errors) == 1:
        raise ParamError(f"{path}: {errors[0]}")
    if errors:  # one line each
        raise ParamError(f"{path} has {len(errors)} problems:\n  " + "\n  ".join(errors))
    return params
