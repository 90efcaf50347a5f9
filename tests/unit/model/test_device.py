"""fmnist/model/device.py: the device train.device names, and the autocast dtype."""

from __future__ import annotations

import pytest
import torch

from fmnist.core.errors import ParamError
from fmnist.model.device import pick_device, pick_dtype

CPU = torch.device("cpu")


def test_auto_never_picks_a_device_that_is_not_there():
    device = pick_device("auto")
    assert device.type in ("cuda", "mps", "cpu")
    if device.type == "cuda":
        assert torch.cuda.is_available()
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert device.type == "cpu"
    assert pick_device("cpu") == CPU
    assert pick_dtype("fp32", CPU) is None and pick_dtype("bf16", CPU) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_a_missing_cuda_is_a_clear_error():
    with pytest.raises(ParamError, match=r"train\.device: cuda was asked for but this machine has no cuda device"):
        pick_device("cuda")
