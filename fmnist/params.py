"""params.yaml, the one source of settings, read once into one typed, checked object.

    params = load_params()          # Params: params.train.lr, params.train.augment.shift, ...
    errors = check_params(mapping)  # the same checks on a mapping (the sweep's), one message per problem

Each section is a pydantic model below: its fields are the keys params.yaml must hold,
typed and ranged; an unknown key is an error too (with the closest known key suggested),
so a typo can't silently fall back to a default. Values that are each fine but can't
train together (more processes than training images, say) are refused too: see
`size_problems`. `train.model` is checked where the nets are registered
(fmnist/model/nets.py: `name_problem`, which the train stage and the sweep hand to the
checks here, so that an unknown net is listed with the other problems), so that editing a
net doesn't rerun the stages that only read params (prepare).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from fmnist.core.dataset import OFFICIAL_COUNTS
from fmnist.core.errors import DataError, ParamError, did_you_mean, flat, one_line, printable, reason, shown
from fmnist.core.io import read_bytes

PARAMS_FILE = "params.yaml"
MAX_PARAMS_BYTES = 1 << 20  # a few dozen lines; anything near this is not a params file
TRAIN_IMAGES = OFFICIAL_COUNTS["train"]  # size of the training file the validation set is cut from
SEED_MAX = 2**32 - 1  # numpy's global seed (seeded from train.seed) takes no more


def _int_as_float(value: Any) -> Any:
    # 1 is a fine learning rate; true is not (bool is an int to Python).
    return float(value) if type(value) is int else value


Number = Annotated[float, BeforeValidator(_int_as_float), Field(allow_inf_nan=False)]
Seed = Annotated[int, Ge(0), Le(SEED_MAX)]


class Section(BaseModel):
    """A section of params.yaml: exact types (no "5" for 5), every key given, no others."""
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Data(Section):
    val_size: Annotated[int, Ge(1), Le(TRAIN_IMAGES - 1)]  # images held out of the training file
    seed: Seed                                              # the train/validation split


class Augment(Section):
    """Training-time augmentation (fmnist/training/augment.py); each one off at false or 0."""
    flip: bool                                 # mirror a random half of each batch left to right
    shift: Annotated[int, Ge(0), Le(8)]        # pixels each image may move in each direction
    erase: Annotated[Number, Ge(0), Le(1)]     # probability of blanking a random patch


class Train(Section):
    model: Annotated[str, Field(description="the name of a net registered in fmnist/model/nets.py")]  # checked there
    epochs: Annotated[int, Ge(1)]
    batch_size: Annotated[int, Ge(1)]  # images a step, over all processes
    optimizer: Literal["sgd", "adamw"]
    lr: Annotated[Number, Gt(0), Le(10)]  # peak of the one-cycle schedule
    momentum: Annotated[Number, Ge(0), Lt(1)]  # AdamW's beta1 must be < 1
    weight_decay: Annotated[Number, Ge(0), Le(1)]
    label_smoothing: Annotated[Number, Ge(0), Le(1)]
    augment: Augment
    ema: Annotated[Number, Ge(0), Le(0.9999)]  # 0: off
    seed: Seed
    device: Literal["auto", "cpu", "cuda", "mps"]
    precision: Literal["auto", "fp32", "bf16"]
    compile: bool
    nproc: Annotated[int, Ge(1), Le(64)]
    max_restarts: Annotated[int, Ge(0), Le(100)]
    resume: bool


class Evaluate(Section):
    batch_size: Annotated[int, Ge(1)]
    tta: bool
    misclassified: Annotated[int, Ge(0), Le(400)]


class Compare(Section):
    max_accuracy_drop: Annotated[Number, Ge(0), Le(1)]


class Params(Section):
    data: Data
    train: Train
    evaluate: Evaluate
    compare: Compare


DEVICES: tuple[str, ...] = get_args(Train.model_fields["device"].annotation)


def _allowed(field) -> str:
    """How a message describes a field's allowed values, from its type and bounds."""
    kind = field.annotation
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(get_args(kind))
    if kind is bool:
        return "true or false"
    if isinstance(kind, type) and issubclass(kind, Section):
        return "a mapping of " + ", ".join(kind.model_fields)
    bounds = {type(m): getattr(m, type(m).__name__.lower()) for m in field.metadata if isinstance(m, (Ge, Gt, Le, Lt))}
    if kind is int:
        lo, hi = bounds.get(Ge), bounds.get(Le)
        return f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    if kind is str:
        return field.description or "text"
    if kind is float:
        low = f"> {bounds[Gt]:g}" if Gt in bounds else f">= {bounds[Ge]:g}"
        high = f"< {bounds[Lt]:g}" if Lt in bounds else f"<= {bounds[Le]:g}"
        return f"a finite number {low} and {high}"
    return "text"


def leaves(model: type[Section] = Params, prefix: str = "") -> dict[str, Any]:
    """Every settable param by its dotted name (train.augment.shift), with its pydantic field."""
    out = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, Section):
            out.update(leaves(kind, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = field
    return out


def kind_of(name: str) -> type:
    """The Python type of a leaf param's values (int, float, bool, str)."""
    kind = leaves()[name].annotation
    return str if get_origin(kind) is Literal else kind


def allowed(name: str) -> str:
    return _allowed(leaves()[name])


def value_of(params: dict, name: str) -> Any:
    """The dotted param `name` (train.augment.shift) of the mapping `params`."""
    node = params
    for key in name.split("."):
        node = node[key]
    return node


def with_value(params: dict, name: str, value: Any) -> dict:
    """A copy of the mapping `params` with the dotted param `name` set to `value`."""
    out = copy.deepcopy(params)
    *sections, key = name.split(".")
    node = out
    for section in sections:
        node = node[section]
    node[key] = value
    return out


def _field(model: type[Section], path: tuple) -> tuple[type[Section] | None, Any]:
    """The model holding the last key of `path`, and that key's field (None: unknown)."""
    for key in path[:-1]:
        field = model.model_fields.get(key)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, Section)):
            return None, None
        model = field.annotation
    return model, model.model_fields.get(path[-1])


def _message(error: dict, given: Any) -> str:
    """One line for one of pydantic's errors, naming the dotted key; `given`: the mapping checked."""
    path = tuple(str(p) for p in error["loc"])
    where = ".".join(printable(flat(p, 40)) for p in path)
    model, field = _field(Params, path) if path else (Params, None)
    if not path:
        sections = ", ".join(Params.model_fields)
        return f"expected a mapping of sections ({sections}) at the top, got {shown(error['input'])}"
    if error["type"] in ("extra_forbidden", "invalid_key") or field is None:  # a key not of ours (1: 2 too)
        known = list(model.model_fields) if model else []
        if len(path) == 1:
            return (f"unknown section {shown(path[0], 40)}{did_you_mean(path[0], known)}; "
                    f"known sections: {', '.join(known)}")
        return f"{where}: unknown key{did_you_mean(path[-1], known)}; known keys: {', '.join(known)}"
    if error["type"] == "missing":
        if len(path) == 1:
            return f"{where}: section missing; it needs {', '.join(field.annotation.model_fields)}"
        return f"{where}: missing; expected {_allowed(field)}"
    try:  # the value as the file holds it (1, not the 1.0 it was converted to)
        value = value_of(given, ".".join(path))
    except (KeyError, TypeError):
        value = error["input"]
    return f"{where}: got {shown(value)}, expected {_allowed(field)}"


def _validate(params: Any) -> tuple[Params | None, list[str]]:
    try:
        return Params.model_validate(params), []
    except ValidationError as exc:
        messages = []
        for error in exc.errors():
            text = _message(error, params)
            if text not in messages:  # a field of two types reports each; one line is enough
                messages.append(text)
        return None, messages


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


def check_sizes(images: int, val_size: int, batch_size: int, nproc: int, source: str) -> None:
    """ParamError with the first of `size_problems`: for data that may hold fewer images
    than the official files params.yaml's check assumed."""
    problems = size_problems(images, val_size, batch_size, nproc, source)
    if problems:
        raise ParamError(problems[0])


# Why a value of train.model is no registered net, or None: fmnist.model.nets.name_problem,
# handed in by the callers that run a net (this module imports none: see the docstring).
ModelProblem = Callable[[str], str | None]


def _check(params: Any, model_problem: ModelProblem | None) -> tuple[Params | None, list[str]]:
    """The mapping `params` as Params (None unless all is well) and one message per
    problem, in params.yaml's order."""
    checked, errors = _validate(params)
    if checked is not None:  # each value is fine on its own: do they train together?
        errors = size_problems(TRAIN_IMAGES, checked.data.val_size, checked.train.batch_size, checked.train.nproc)
    train = params.get("train") if isinstance(params, dict) else None
    model = train.get("model") if isinstance(train, dict) else None
    problem = model_problem(model) if model_problem is not None and isinstance(model, str) else None
    if problem:  # train.model is the train section's first key
        errors.insert(next((i for i, e in enumerate(errors) if not e.startswith("data.")), len(errors)), problem)
    return (None if errors else checked), errors


def check_params(params: Any, model_problem: ModelProblem | None = None) -> list[str]:
    """Return one message per problem in the mapping `params` (empty when all is well);
    with `model_problem`, an unregistered train.model among them."""
    return _check(params, model_problem)[1]


def parse_params(params: Any, where: str = PARAMS_FILE, model_problem: ModelProblem | None = None) -> Params:
    """A mapping (params.yaml as YAML reads it) as Params; ParamError listing every problem
    (with `model_problem`, an unregistered train.model among them)."""
    checked, errors = _check(params, model_problem)
    if len(errors) == 1:
        raise ParamError(f"{where}: {errors[0]}")
    if errors:  # one line each
        raise ParamError(f"{where} has {len(errors)} problems:\n  " + "\n  ".join(errors))
    return checked


def load_params(path: str | Path = PARAMS_FILE, model_problem: ModelProblem | None = None) -> Params:
    """Read and check the whole params file, once; raise ParamError listing every problem
    (with `model_problem`, train.model's too: see parse_params)."""
    path = Path(path)
    restore = f"restore it with `git checkout {path}`"
    try:
        data = read_bytes(path, "run from the repository's top folder", MAX_PARAMS_BYTES, "a params file")
        params = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ParamError(f"{path}: cannot be read as text ({reason(exc)}); {restore}") from None
    except Exception as exc:  # noqa: BLE001 - YAMLError; RecursionError (deep nesting); what PyYAML's constructors
        # raise for a tag they can't build (`!!float x` ValueError, `!!float` IndexError, `!!bool x` KeyError)
        raise ParamError(f"{path}: not valid YAML: {one_line(exc)}; fix it or {restore}") from None
    except DataError as exc:  # missing, unreadable, not a file, too large: the params are at fault
        raise ParamError(str(exc)) from None
    if params is None:
        raise ParamError(f"{path}: the file is empty; {restore}")
    return parse_params(params, str(path), model_problem)
