"""fmnist/training/stop.py and fit's should_stop: a sweep's stop request ends a run with the
epochs it finished, never before the first one."""

from __future__ import annotations

import torch

from fmnist.training.distributed import World
from fmnist.training.loop import build, fit
from fmnist.training.stop import STOP_ENV, stop_request
from helpers.data import tiny, train_params

CPU = torch.device("cpu")


def test_no_request_without_the_variable_or_with_several_processes(monkeypatch, tmp_path):
    monkeypatch.delenv(STOP_ENV, raising=False)
    assert stop_request(World()) is None
    monkeypatch.setenv(STOP_ENV, str(tmp_path / "stop"))
    assert stop_request(World(0, 2)) is None  # the ranks would have to agree on where to stop


def test_the_file_stops_a_run_but_never_its_first_epoch(monkeypatch, tmp_path):
    stop = tmp_path / "stop"
    monkeypatch.setenv(STOP_ENV, str(stop))
    should_stop = stop_request(World())
    assert not should_stop(1, 50) and not should_stop(2, 50)
    stop.touch()
    assert not should_stop(1, 50)  # a run with no finished epoch has no model to keep
    assert should_stop(2, 50)


def test_fit_ends_with_the_epochs_it_finished_when_asked_to_stop():
    p = train_params(model="lenet", epochs=4, batch_size=32)
    train, val = tiny(128, seed=1), tiny(64, seed=2)
    asked = []

    def should_stop(epoch: int, batches: int) -> bool:
        asked.append((epoch, batches))
        return epoch == 3

    progress = fit(build(p, train[0], CPU), train, val, p, should_stop=should_stop)
    assert progress.epoch == 2 and len(progress.history) == 2  # epoch 3 was dropped, epoch 4 never ran
    assert progress.best["epoch"] in (1, 2) and progress.best["state_dict"] is not None
    assert asked[-1][0] == 3 and {epoch for epoch, _ in asked} == {1, 2, 3}
