"""fmnist/training/ema.py: the moving average of the weights."""

from __future__ import annotations

import torch

from fmnist.model.nets import build_model
from fmnist.training.ema import Ema
from fmnist.training.loop import seed_everything


def test_ema_follows_the_weights_and_starts_fast():
    seed_everything(0)
    net = build_model("cnn")
    ema = Ema(net, decay=0.9)
    first = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update()  # warm-up: decay min(0.9, 2/11)
    assert torch.allclose(ema.module[0].weight, first + 9 / 11)
    for _ in range(300):
        ema.update()
    assert torch.allclose(ema.module[0].weight, net[0].weight)
    assert not ema.module[0].weight.requires_grad
