"""fmnist/training/loop.py: the schedule, the loop's behaviour (on the CPU, and on CUDA where
there is one), determinism."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmnist.core.errors import TrainingDiverged
from fmnist.model.classifier import Classifier, Evaluation, score
from fmnist.model.device import pick_device, pick_dtype, to_device_layout
from fmnist.model.nets import build_model
from fmnist.training import loop
from fmnist.training.distributed import steps_per_epoch
from fmnist.training.loop import TrainState, build, lr_factor, seed_everything, train_epoch
from helpers.data import synthetic, tiny, train_params

CPU = torch.device("cpu")


def loop_params(**overrides):
    """The train params of a tiny CPU run: flips on, label smoothing."""
    augment = {"flip": True, "shift": 0, "erase": 0.0}
    return train_params(**{"epochs": 2, "batch_size": 32, "seed": 0, "augment": augment, "label_smoothing": 0.1,
                           **overrides})


def plain_sgd(net: torch.nn.Module, lr: float, device: torch.device = CPU, dtype=None) -> TrainState:
    """`net` with SGD at a constant learning rate and no moving average."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    return TrainState(net, to_device_layout(net, device), opt, torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0),
                      None, device, dtype)


def fit(seed: int, epochs: int = 2, lr: float = 0.05, model: str = "cnn"):
    seed_everything(seed)
    net = build_model(model)
    state = plain_sgd(net, lr)
    x, y = tiny()
    losses = [train_epoch(state, x, y, e, loop_params(seed=seed))[0] for e in range(1, epochs + 1)]
    return net, losses


def test_train_epoch_learns_and_evaluate_scores():
    net, losses = fit(seed=0, epochs=4)
    assert losses[-1] < losses[0]
    x, y = tiny(120, seed=5)
    result = score(Classifier(net, mirror=True), x, y, device=CPU, batch_size=50)
    assert result.probs.shape == (120, 10)
    assert torch.allclose(result.probs.sum(1), torch.ones(120), atol=1e-5)
    assert result.accuracy > 0.3 and result.loss > 0  # chance is 0.1


def test_fit_keeps_the_epoch_of_the_best_validation_accuracy_not_the_last(monkeypatch):
    """Validation accuracies 0.5, 0.9, 0.9, 0.7: epoch 2 is kept, with its weights (a tie
    does not replace it; the last epoch, worse, does not either). The scores are scripted
    (the loop's `score` replaced) so that the best epoch is not the last whatever training does."""
    accuracies = iter([0.5, 0.9, 0.9, 0.7])
    monkeypatch.setattr(loop, "score", lambda *args, **kwargs: Evaluation(
        loss=1.0, accuracy=next(accuracies), probs=torch.zeros(0, 10)))
    seed_everything(0)
    net = build_model("cnn")
    x, y = tiny(64)
    weights = {}

    def on_epoch(progress, seconds):
        weights[progress.epoch] = {k: v.detach().clone() for k, v in net.state_dict().items()}

    progress = loop.fit(plain_sgd(net, 0.05), (x, y), (x[:10], y[:10]), loop_params(epochs=4), on_epoch=on_epoch)
    assert [row["val/acc"] for row in progress.history] == [0.5, 0.9, 0.9, 0.7]
    assert progress.epoch == 4 and progress.best["epoch"] == 2 and progress.best["val_acc"] == 0.9
    kept = progress.best["state_dict"]
    assert kept.keys() == weights[2].keys() and all(torch.equal(kept[k], weights[2][k]) for k in kept)
    assert not all(torch.equal(kept[k], weights[4][k]) for k in kept)  # training moved the weights after epoch 2


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_trains_with_data_on_the_device():
    seed_everything(0)
    dev = torch.device("cuda")
    net = build_model("cnn")
    state = plain_sgd(net, 0.05, dev, torch.bfloat16)
    x, y = tiny()
    x, y = x.to(dev), y.to(dev)
    loss, acc, _ = train_epoch(state, x, y, 1, loop_params(device="cuda"))
    assert next(net.parameters()).is_cuda and loss == loss and 0 <= acc <= 1
    assert pick_device("auto").type == "cuda"
    if torch.cuda.is_bf16_supported():
        assert pick_dtype("auto", dev) == torch.bfloat16
    result = score(Classifier(net, mirror=True), x.cpu(), y.cpu(), device=dev, batch_size=64, dtype=torch.bfloat16)
    assert result.probs.shape == (len(y), 10) and 0 <= result.accuracy <= 1


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
        loss, acc, _ = train_epoch(state, x, y, 1, p)
        assert state.scheduler.last_epoch == expected == steps_per_epoch(33, batch_size)
        assert math.isfinite(loss) and 0 <= acc <= 1
