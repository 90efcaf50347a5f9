"""Model shapes, the training loop's behaviour, devices, determinism."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from helpers import synthetic
from fmnist.checkpoint import checkpoint_state, restore
from fmnist.classifier import Classifier, score
from fmnist.device import pick_device, pick_dtype, to_device_layout
from fmnist.distributed import steps_per_epoch
from fmnist.ema import Ema
from fmnist.errors import ParamError, TrainingDiverged
from fmnist.model import ARCHITECTURES, build_model
from fmnist.training import Settings, TrainState, build, fit as fit_run, seed_everything, train_epoch

CPU = torch.device("cpu")
TRAIN = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train"]


def tiny(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic(n, seed)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def settings(**overrides) -> Settings:
    """The loop's settings for a tiny CPU run: flips on, label smoothing, no bar."""
    values = {"epochs": 2, "batch_size": 32, "seed": 0, "augment": True, "shift": 0, "erase": 0.0,
              "label_smoothing": 0.1, "device": CPU, "dtype": None, "progress_bar": False}
    return Settings(**{**values, **overrides})


def plain_sgd(net: torch.nn.Module, lr: float, device: torch.device = CPU) -> TrainState:
    """`net` with SGD at a constant learning rate and no moving average."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    return TrainState(net, to_device_layout(net, device), opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
                      None)


def fit(seed: int, epochs: int = 2, lr: float = 0.05, model: str = "cnn"):
    seed_everything(seed)
    net = build_model(model)
    state = plain_sgd(net, lr)
    x, y = tiny()
    losses = [train_epoch(state, x, y, e, settings(seed=seed))[0] for e in range(1, epochs + 1)]
    return net, losses


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


def test_train_epoch_learns_and_evaluate_scores():
    net, losses = fit(seed=0, epochs=4)
    assert losses[-1] < losses[0]
    x, y = tiny(120, seed=5)
    result = score(Classifier(net, mirror=True), x, y, device=CPU, batch_size=50)
    assert result.probs.shape == (120, 10)
    assert torch.allclose(result.probs.sum(1), torch.ones(120), atol=1e-5)
    assert result.accuracy > 0.3 and result.loss > 0  # chance is 0.1


def test_one_seed_gives_identical_weights_and_another_does_not():
    a, _ = fit(seed=1)
    b, _ = fit(seed=1)
    c, _ = fit(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_a_diverging_loss_stops_training_naming_epoch_and_batch():
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, batch \d+ of 8; try a smaller train.lr"):
        fit(seed=0, epochs=1, lr=1e12)


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
    with pytest.raises(ParamError, match="train.device: cuda was asked for but this machine has no cuda device"):
        pick_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_trains_with_data_on_the_device():
    seed_everything(0)
    dev = torch.device("cuda")
    net = build_model("cnn")
    state = plain_sgd(net, 0.05, dev)
    x, y = tiny()
    x, y = x.to(dev), y.to(dev)
    loss, acc, _ = train_epoch(state, x, y, 1, settings(device=dev, dtype=torch.bfloat16))
    assert next(net.parameters()).is_cuda and loss == loss and 0 <= acc <= 1
    assert pick_device("auto").type == "cuda"
    if torch.cuda.is_bf16_supported():
        assert pick_dtype("auto", dev) == torch.bfloat16
    result = score(Classifier(net, mirror=True), x.cpu(), y.cpu(), device=dev, batch_size=64, dtype=torch.bfloat16)
    assert result.probs.shape == (len(y), 10) and 0 <= result.accuracy <= 1


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


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_a_run_restored_from_its_checkpoint_ends_like_an_uninterrupted_one(ema):
    p = {**TRAIN, "epochs": 3, "batch_size": 32, "lr": 0.05, "device": "cpu", "ema": ema, "shift": 1, "erase": 0.3}
    train, val = tiny(160), tiny(40, seed=3)
    saved = {}

    def run(checkpoint=None):
        state = build(p, len(train[1]), CPU)
        steps = steps_per_epoch(len(train[1]), p["batch_size"])
        progress = restore(checkpoint, "key", state, steps) if checkpoint else None

        def on_epoch(progress, seconds):  # what the train stage's checkpoint holds
            if progress.epoch == 2 and checkpoint is None:
                saved.update(copy.deepcopy(checkpoint_state(progress, "key", state)))

        return fit_run(state, train, val, Settings.from_params(p, CPU, None, progress_bar=False), progress, on_epoch)

    straight = run()
    resumed = run(checkpoint=saved)
    assert resumed.epoch == 3 and resumed.history == straight.history
    assert resumed.best["epoch"] == straight.best["epoch"]
    for key, value in straight.best["state_dict"].items():
        assert torch.equal(value, resumed.best["state_dict"][key]), key
