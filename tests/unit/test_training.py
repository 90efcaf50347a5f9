"""fmnist/training.py: the schedule, the loop's behaviour, determinism."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import synthetic, train_params
from fmnist.distributed import steps_per_epoch
from fmnist.training import Settings, build, lr_factor, train_epoch

CPU = torch.device("cpu")


@settings(deadline=None)  # a shared CI machine's timings vary
@given(total=st.integers(1, 3000))
def test_the_schedule_is_defined_at_every_step(total):
    factors = [lr_factor(step, total) for step in range(total + 1)]  # + the step() after the last one
    assert all(math.isfinite(f) and 0 < f <= 1 for f in factors)
    assert max(factors) == 1.0  # the peak learning rate is reached, even with one step


def test_a_single_step_and_a_last_batch_of_one_image_train():
    x, y = (torch.from_numpy(a) for a in synthetic(33, seed=0))
    y = y.long()
    for batch_size, expected in ((64, 1), (32, 2), (1, 33)):  # 33 = 32 + 1: a last batch of one image
        p = train_params(epochs=1, batch_size=batch_size)
        state = build(p, 33, CPU)
        loss, acc = train_epoch(state, x, y, 1, Settings.from_params(p, CPU, None, progress_bar=False))
        assert state.scheduler.last_epoch == expected == steps_per_epoch(33, batch_size)
        assert math.isfinite(loss) and 0 <= acc <= 1
