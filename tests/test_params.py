"""params.yaml checks: every key typed and ranged, unknown keys caught with a suggestion."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fmnist.params import check_params

DEFAULTS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


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
    ("train", "lr", 0, "train.lr: got 0.0, expected a finite number > 0"),
    ("train", "lr", float("nan"), "train.lr: got nan"),
    ("train", "lr", float("inf"), "train.lr: got inf"),
    ("train", "lr", "fast", "train.lr: got 'fast'"),
    ("train", "device", "tpu", "train.device: got 'tpu', expected one of auto, cpu, cuda, mps"),
    ("train", "model", "resnet", "train.model: got 'resnet', expected one of cnn3v2, cnn3, cnn3_small, cnn, lenet"),
    ("train", "optimizer", "adam", "train.optimizer: got 'adam', expected one of sgd, adamw"),
    ("data", "val_size", 60000, "data.val_size: got 60000, expected an integer from 1 to 59999"),
    ("train", "augment", "yes", "train.augment: got 'yes', expected true or false"),
    ("train", "shift", 9, "train.shift: got 9, expected an integer from 0 to 8"),
    ("train", "erase", 1.5, "train.erase: got 1.5, expected a finite number >= 0 and <= 1"),
    ("train", "ema", 1, "train.ema: got 1.0, expected a finite number >= 0 and <= 0.9999"),
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
