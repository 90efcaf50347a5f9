"""fmnist/model/nets.py: every architecture's output shape, and that each can learn."""

from __future__ import annotations

import pytest
import torch

from fmnist.core.errors import ParamError
from fmnist.model.nets import ARCHITECTURES, PatchWhitening, build_model, fit_to_data
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
    fit_to_data(model, x)
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


def test_patch_whitening_makes_the_patches_uncorrelated_with_unit_variance():
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.randn(64, 1, 30, 30), 3, stride=1)  # neighbours strongly correlated
    whitening = PatchWhitening(eps=0.0)
    whitening.fit(x)
    out = torch.nn.functional.conv2d(x, whitening.weight)  # every full 3x3 patch, no padding
    first, mirrored = out[:, :9], out[:, 9:]
    assert torch.equal(mirrored, -first)  # both signs, for the ReLU after it
    channels = first.permute(1, 0, 2, 3).reshape(9, -1)
    assert torch.allclose(torch.cov(channels), torch.eye(9), atol=1e-3)
    assert torch.corrcoef(torch.nn.functional.unfold(x, 3).transpose(1, 2).reshape(-1, 9).T)[0, 1] > 0.5  # they were


def test_patch_whitening_is_fitted_once_and_then_fixed():
    net = build_model("cnn6w")
    whitening = net[0]
    assert isinstance(whitening, PatchWhitening) and "0.weight" in net.state_dict()
    assert whitening.weight not in set(net.parameters())  # a buffer: no optimiser moves it
    x, _ = tiny(40)
    fit_to_data(net, (x.float() / 255).unsqueeze(1))
    fitted = whitening.weight.clone()
    assert fitted.abs().sum() > 0
    net(torch.randn(8, 1, 28, 28)).sum().backward()
    assert torch.equal(whitening.weight, fitted)
