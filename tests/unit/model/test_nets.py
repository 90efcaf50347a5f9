"""fmnist/model/nets.py: every architecture's output shape, and that each can learn."""

from __future__ import annotations

import pytest
import torch

from fmnist.core.errors import ParamError
from fmnist.model.nets import ARCHITECTURES, build_model
from helpers.data import tiny


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_output_shapes(name):
    model = build_model(name).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_loss_falls_when_overfitting_one_batch(name):
    torch.manual_seed(0)
    model = build_model(name)
    x, y = tiny(32)
    x = (x.float() / 255).unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_an_unregistered_net_is_named_with_the_closest_registered_one():
    with pytest.raises(ParamError) as err:
        build_model("cnn7")
    assert str(err.value).startswith("train.model: got 'cnn7' (did you mean 'cnn")
    assert str(err.value).endswith(f"expected one of {', '.join(ARCHITECTURES)}")


def test_every_registered_net_is_a_function_of_its_own_name_with_a_docstring():
    assert {"cnn3v2", "cnn6", "lenet"} <= set(ARCHITECTURES)
    for name, net in ARCHITECTURES.items():
        assert net.__name__ == name and net.__doc__, name
