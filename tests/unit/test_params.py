"""params.yaml checks (fmnist/params.py): every key typed and ranged, unknown keys caught
with a suggestion, sizes that can't train refused up front, a damaged file in one line,
several problems one line each; any value anywhere fuzzed with hypothesis.

Sizes are property-based (hypothesis) over the training-set size, data.val_size,
train.batch_size, train.epochs and train.nproc: what the check allows trains, through
the real split, build() (net, optimizer, one-cycle schedule) and fit(), every step of
the schedule; what it refuses, it refuses in one line. A process group can't be started
per example, so nproc > 1 runs one rank of the launch (any rank) in a one-process Gloo
group: its shard, batches, DDP wrapper and collectives are the real ones.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributed as dist
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fmnist.core.errors import ParamError
from fmnist.model.nets import name_problem
from fmnist.params import TRAIN_IMAGES, check_params, load_params, size_problems, with_value
from fmnist.splits import split_train_val
from fmnist.training.distributed import World, per_rank_batch, shard, steps_per_epoch
from fmnist.training.loop import build, fit
from helpers import ROOT
from helpers.damage import leaves, one_line
from helpers.data import synthetic, train_params

CPU = torch.device("cpu")
DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())


def problems(section: str, key: str, value) -> list[str]:
    params = copy.deepcopy(DEFAULTS)
    params[section][key] = value
    return check_params(params)


def test_the_committed_params_are_valid():
    assert check_params(DEFAULTS) == []


@pytest.mark.parametrize("section, key, value, expected", [
    ("train", "epochs", 0, "train.epochs: got 0, expected an integer >= 1"),
    ("train", "epochs", 2.5, "train.epochs: got 2.5, expected an integer >= 1"),
    ("train", "epochs", True, "train.epochs: got True"),
    ("train", "batch_size", -4, "train.batch_size: got -4"),
    ("train", "lr", 0, "train.lr: got 0, expected a finite number > 0"),
    ("train", "lr", float("nan"), "train.lr: got nan"),
    ("train", "lr", float("inf"), "train.lr: got inf"),
    ("train", "lr", "fast", "train.lr: got 'fast'"),
    ("train", "device", "tpu", "train.device: got 'tpu', expected one of auto, cpu, cuda, mps"),
    ("train", "optimizer", "adam", "train.optimizer: got 'adam', expected one of sgd, adamw"),
    ("data", "val_size", 60000, "data.val_size: got 60000, expected an integer from 1 to 59999"),
    ("train", "augment", "yes", "train.augment: got 'yes', expected a mapping of flip, shift, erase"),
    ("train", "ema", 1, "train.ema: got 1, expected a finite number >= 0 and <= 0.9999"),
    ("train", "momentum", 1.0, "train.momentum: got 1.0, expected a finite number >= 0 and < 1"),
    ("train", "seed", 2**32, "train.seed: got 4294967296, expected an integer from 0 to 4294967295"),
    ("data", "seed", -1, "data.seed: got -1, expected an integer from 0 to 4294967295"),
])
def test_bad_values_are_named_with_what_is_allowed(section, key, value, expected):
    found = problems(section, key, value)
    assert len(found) == 1 and found[0].startswith(expected), found


def test_an_integer_learning_rate_is_fine():
    assert problems("train", "lr", 1) == []


def test_unknown_keys_suggest_the_closest_known_one():
    params = copy.deepcopy(DEFAULTS)
    params["train"]["epoch"] = 3
    params["trian"] = {}
    found = check_params(params)
    assert any(p.startswith("train.epoch: unknown key (did you mean 'epochs'?)") for p in found), found
    assert any(p.startswith("unknown section 'trian' (did you mean 'train'?)") for p in found), found


def test_missing_keys_and_sections():
    params = copy.deepcopy(DEFAULTS)
    del params["train"]["lr"]
    del params["evaluate"]
    found = check_params(params)
    assert any(p.startswith("train.lr: missing") for p in found)
    assert any(p.startswith("evaluate: section missing") for p in found)
    assert check_params(["not", "a", "mapping"])[0].startswith("expected a mapping of sections")


# --- the file: damaged, fuzzed, several problems ------------------------------

DAMAGED_PARAMS = {
    "binary garbage": (bytes(range(128, 256)) * 4, "cannot be read as text ('utf-8' codec can't decode byte 0x80"),
    "empty": (b"", "the file is empty"),
    "a YAML list": (b"- data\n- train\n", ("expected a mapping of sections (data, train, evaluate, compare) at the "
                                         "top, got ['data', 'train']")),
    "a number": (b"3\n", "at the top, got 3"),
    "broken YAML": (b"train: [1, 2\n", "not valid YAML"),
    "absurdly deep": (b"[" * 1000, "not valid YAML"),  # RecursionError in PyYAML
    "a tab": (b"train:\n\tlr: 1\n", "not valid YAML"),
    # Found by fuzzing (fuzz/corpus/params/crash-float-tag.yaml, sweep's crash-empty-float.yaml): for a tag
    # PyYAML can't construct, it raises ValueError, IndexError, KeyError or AttributeError, not a YAMLError.
    "a tag it can't construct": (b"train: {lr: !!float fast}\n", "not valid YAML: could not convert string to float"),
    "an empty float": (b"train: {lr: !!float }\n", "not valid YAML: string index out of range"),
    "a bool that isn't": (b"train: {augment: !!bool maybe}\n", "not valid YAML: 'maybe'"),
    "a date that isn't": (b"train: {lr: !!timestamp 2020-99}\n", "not valid YAML: 'NoneType' object has no"),
    # Found with fuzz/corpus/sweep/crash-format-character.yaml: a key is quoted with what a terminal acts on escaped.
    "an escape in a key": ((ROOT / "params.yaml").read_bytes().replace(b"\ntrain:\n", b'\ntrain:\n  "lr\\x1b[2J": 1\n'),
                           r"train.lr\x1b[2J: unknown key"),
    "5,000 digits": (b"data: {val_size: " + b"1" * 5000 + b"}\n", "not valid YAML: Exceeds the limit"),
}


@pytest.mark.parametrize("damage", DAMAGED_PARAMS)
def test_a_damaged_params_file_is_one_line(tmp_path, damage):
    data, expected = DAMAGED_PARAMS[damage]
    path = tmp_path / "params.yaml"
    path.write_bytes(data)
    with pytest.raises(ParamError) as err:
        load_params(path)
    one_line(str(err.value), f"{path}: ", expected)


YAML_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_anywhere_in_params_is_checked_params_or_one_line_per_problem(tmp_path, data):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    where = data.draw(st.sampled_from(sorted(leaves(params), key=str)))
    node = params
    for part in where[:-1]:
        node = node[part]
    original = node[where[-1]]  # junk, or a value of the key's own type (often allowed), or the one it was
    node[where[-1]] = data.draw(YAML_JUNK | st.from_type(type(original)) | st.just(original))
    if data.draw(st.booleans()):  # a new key too
        node[data.draw(st.text(max_size=8))] = data.draw(YAML_JUNK)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    try:
        loaded = load_params(path)
    except ParamError as exc:
        first, *rest = str(exc).split("\n")
        assert first.startswith(f"{path}"), str(exc)  # noqa: PT017 - loading may succeed; a failure must read well
        assert all(line.startswith("  ") and line.strip() for line in rest), str(exc)  # noqa: PT017 - loading may succeed; a failure must read well
        assert len(rest) == 0 or first.endswith(f"has {len(rest)} problems:"), str(exc)  # noqa: PT017 - loading may succeed; a failure must read well
    else:  # accepted: the Params hold what the file gave, every key, nothing dropped, added or converted
        event("accepted")
        assert loaded.model_dump() == params
        value, given = loaded, node[where[-1]]
        for part in where:
            value = getattr(value, part)
        if not isinstance(given, dict):  # of its own type too (True == 1): an int is taken as a float, no other
            assert type(value) is type(given) or (type(value), type(given)) == (float, int)


def test_several_problems_one_line_each(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(lr=-1, epochs=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamError) as err:
        load_params(tmp_path / "params.yaml")
    assert str(err.value).splitlines()[1:] == [
        "  train.epochs: got 0, expected an integer >= 1",
        "  train.lr: got -1, expected a finite number > 0 and <= 10"]


@pytest.mark.parametrize(("data", "train"),
                         [({}, {"lr": -1}), ({"val_size": 0}, {}), ({}, {"batch_size": 1, "nproc": 2})])
def test_an_unregistered_net_is_listed_with_the_other_problems_in_the_file_s_order(tmp_path, data, train):
    """The train stage's check (model_problem: the registry's) adds train.model to the list,
    whether the other problems are a value's or the sizes'; without it, the net isn't checked here."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(data)
    params["train"].update(model="resnet", **train)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamError) as err:
        load_params(tmp_path / "params.yaml", model_problem=name_problem)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{tmp_path / 'params.yaml'} has 2 problems:" and len(lines) == 3
    assert lines[1 if not data else 2].startswith("  train.model: got 'resnet' (did you mean ")
    with pytest.raises(ParamError) as err:
        load_params(tmp_path / "params.yaml")
    assert "train.model" not in str(err.value) and "\n" not in str(err.value)


# --- sizes that can't train ---------------------------------------------------

def assert_one_line_each(problems: list[str]) -> None:
    assert problems
    for line in problems:
        assert "\n" not in line and line.split(":")[0] in (
            "data.val_size", "train.nproc", "train.batch_size"), line


@pytest.fixture(scope="module")
def group():
    """A one-process Gloo group: one rank of an N-process launch runs its real code in it."""
    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_the_params_check_refuses_what_cannot_train():
    def check(**train):
        params = {**DEFAULTS, "train": {**DEFAULTS["train"], **train}}
        return check_params(params)

    assert check() == []
    assert check(nproc=4, batch_size=3) == [
        ("train.batch_size: got 3, but each of the train.nproc 4 processes takes batch_size / nproc images "
         "a step: it must be at least 4")]
    params = {**DEFAULTS, "data": {**DEFAULTS["data"], "val_size": 59_998}, "train": {**DEFAULTS["train"], "nproc": 3}}
    assert check_params(params) == [
        ("train.nproc: got 3, but Fashion-MNIST has 60000 training images and data.val_size holds out 59998, "
         "leaving 2: fewer than one per process; lower train.nproc or data.val_size")]
    params["data"]["val_size"] = 59_999
    params["train"]["nproc"] = 1
    assert check_params(params) == []  # one training image trains


@settings(deadline=None)
@given(images=st.integers(1, TRAIN_IMAGES), val_size=st.integers(0, TRAIN_IMAGES),
       batch_size=st.integers(1, 4096), nproc=st.integers(1, 64))
def test_every_rank_takes_the_steps_the_schedule_counts(images, val_size, batch_size, nproc):
    """The arithmetic train_epoch runs on each rank, at full scale."""
    problems = size_problems(images, val_size, batch_size, nproc)
    if problems:
        assert_one_line_each(problems)
        return
    n_train = images - val_size
    steps = steps_per_epoch(n_train, batch_size, nproc)
    assert steps >= 1
    order = torch.randperm(n_train)
    shards = [shard(order, rank, nproc) for rank in range(nproc)]
    per_rank = per_rank_batch(batch_size, nproc)
    assert {len(s) for s in shards} == {n_train // nproc} and n_train // nproc >= 1
    assert all(-(-len(s) // per_rank) == steps for s in shards)  # every rank, the same steps
    seen = torch.cat(shards)
    assert len(seen.unique()) == len(seen) > n_train - nproc  # disjoint, fewer than nproc left out


@st.composite
def run_sizes(draw):
    """Sizes of a small run: mostly trainable, some not (what the checks must refuse)."""
    images = draw(st.integers(1, 32))
    return images, draw(st.integers(1, max(1, images - 1))), draw(st.integers(1, 150)), \
        draw(st.integers(1, 2)), draw(st.integers(1, 4))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=run_sizes(), rank=st.integers(0, 3),
       model=st.sampled_from(["lenet", "cnn", "cnn3v2", "cnn3_small"]), optimizer=st.sampled_from(["sgd", "adamw"]))
def test_every_size_the_params_allow_trains(group, sizes, rank, model, optimizer):
    images, val_size, batch_size, epochs, nproc = sizes
    problems = size_problems(images, val_size, batch_size, nproc)
    if problems:
        assert_one_line_each(problems)
        event("refused")
        return
    x, y = (torch.from_numpy(a) for a in synthetic(images, seed=images))
    y = y.long()
    train_idx, val_idx = split_train_val(images, val_size, seed=0)  # what the prepare stage does
    train, val = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    p = train_params(epochs=epochs, batch_size=batch_size, nproc=nproc, model=model, optimizer=optimizer)
    world = World(rank % nproc, nproc)

    state = build(p, train[0], CPU, None, world)
    optimizer_, scheduler = state.optimizer, state.scheduler
    steps = []
    optimizer_.register_step_post_hook(lambda *_: steps.append(scheduler.last_epoch))
    progress = fit(state, train, val, p)

    total = epochs * steps_per_epoch(len(train[1]), batch_size, nproc)
    assert len(steps) == total == scheduler.last_epoch  # every step of the schedule, no more
    assert steps == list(range(total))
    assert all(math.isfinite(g["lr"]) and g["lr"] > 0 for g in optimizer_.param_groups)
    assert progress.epoch == epochs
    if world.main:
        assert len(progress.history) == epochs and progress.best["state_dict"] is not None
    event(f"trained: {'one step' if total == 1 else 'several steps'}, {nproc} process(es)")


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("train.augment.flip", "yes", "train.augment.flip: got 'yes', expected true or false"),
    ("train.augment.shift", 9, "train.augment.shift: got 9, expected an integer from 0 to 8"),
    ("train.augment.erase", 1.5, "train.augment.erase: got 1.5, expected a finite number >= 0 and <= 1"),
])
def test_augmentation_settings_are_named_by_their_dotted_key(name, value, expected):
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert check_params(with_value(committed, name, value)) == [expected]


def test_an_unknown_augmentation_suggests_the_closest_known_one():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    committed["train"]["augment"]["shfit"] = 1
    assert check_params(committed) == [("train.augment.shfit: unknown key (did you mean 'shift'?); "
                                        "known keys: flip, shift, erase")]


def test_keys_that_are_not_text_are_named_as_unknown_keys():
    """YAML allows `1: 2` or `null: x` as keys (found by fuzzing: they once raised AttributeError)."""
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    committed["data"][1] = 2
    committed["train"]["augment"][None] = 3
    committed[None] = 4
    assert check_params(committed) == [
        "data.1: unknown key; known keys: val_size, seed",
        "train.augment.None: unknown key; known keys: flip, shift, erase",
        "unknown section 'None'; known sections: data, train, evaluate, compare"]
