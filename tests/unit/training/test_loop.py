"""fmnist/training/loop.py: the schedule, the loop's behaviour, determinism; no host sync in a step
(counted on the CPU, and on CUDA with torch's sync debug mode where there is one); a tiny run on CUDA
and on MPS where there is one."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from fmnist.core.errors import TrainingDiverged
from fmnist.model.classifier import Classifier, Evaluation, score
from fmnist.model.device import pick_dtype, to_device, to_device_layout
from fmnist.model.nets import build_model
from fmnist.training import loop
from fmnist.training import loop as training
from fmnist.training.distributed import steps_per_epoch
from fmnist.training.loop import TrainState, build, fit, lr_factor, seed_everything, train_epoch
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


def fit_sgd(seed: int, epochs: int = 2, lr: float = 0.05, model: str = "cnn"):
    seed_everything(seed)
    net = build_model(model)
    state = plain_sgd(net, lr)
    x, y = tiny()
    losses = [train_epoch(state, x, y, e, loop_params(seed=seed))[0] for e in range(1, epochs + 1)]
    return net, losses


def test_train_epoch_learns_and_evaluate_scores():
    net, losses = fit_sgd(seed=0, epochs=4)
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
    a, _ = fit_sgd(seed=1)
    b, _ = fit_sgd(seed=1)
    c, _ = fit_sgd(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_a_diverging_loss_stops_training_naming_epoch_and_batch():
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, batch \d+ of 8; try a smaller train.lr"):
        fit_sgd(seed=0, epochs=1, lr=1e12)


class HostTraffic(TorchFunctionMode):
    """Records, in order, every call that moves a tensor between devices or makes the host wait
    for a tensor's value (what blocks on a GPU), and every optimizer step ("step")."""

    READS = frozenset({torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
                       torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.nonzero, torch.nonzero,
                       torch.Tensor.cpu})
    MOVES = frozenset({torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.pin_memory})

    def __init__(self):
        super().__init__()
        self.events: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS or (func is torch.Tensor.__getitem__ and _masks(args[1])):
            self.events.append(f"read:{func.__name__}")
        elif func in self.MOVES and (func is not torch.Tensor.to or _names_a_device(args[1:], kwargs)):
            self.events.append(f"move:{func.__name__}")
        return func(*args, **kwargs)

    def between_steps(self) -> list[list[str]]:
        """The events before the first step, between each step and the next, and after the last."""
        groups = [[]]
        for event in self.events:
            if event == "step":
                groups.append([])
            else:
                groups[-1].append(event)
        return groups


def _names_a_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args)


def _masks(index) -> bool:
    indices = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)


def test_a_step_moves_nothing_and_waits_for_nothing_only_the_checks_do(monkeypatch):
    """The epoch's order and augmentation draws are moved before the first step, once; between
    steps the host reads nothing, but every CHECK_EVERY batches, after the last and at the end."""
    monkeypatch.setattr(training, "CHECK_EVERY", 3)
    x, y = tiny()  # 256 images: 8 batches of 32
    p = loop_params(augment={"flip": True, "shift": 2, "erase": 0.5})
    state = build(p, len(y), CPU)
    traffic = HostTraffic()
    state.optimizer.register_step_post_hook(lambda *_: traffic.events.append("step"))
    with traffic:
        train_epoch(state, x, y, 1, p)
    groups = traffic.between_steps()
    assert len(groups) == 9
    assert groups[0] == ["move:to"] * 4  # the order and the flip, shift and erase draws
    for step, events in enumerate(groups[1:], start=1):
        checked = step % 3 == 0 or step == 8
        assert all(e.startswith("read:") for e in events) and bool(events) == checked, (step, events)


def tiny_run_learns(device: torch.device) -> None:
    """A few epochs of a tiny run on `device` with its own precision: the loss falls, validation beats chance."""
    p = loop_params(epochs=4, device=device.type, precision="auto", augment={"flip": True, "shift": 1, "erase": 0.25})
    dtype = pick_dtype(p.precision, device)
    state = build(p, 256, device, dtype)
    train, val = [tuple(to_device(t, device) for t in tiny(n, seed)) for n, seed in ((256, 0), (200, 5))]
    progress = fit(state, train, val, p)
    assert next(state.net.parameters()).device.type == device.type
    losses = [row["train/loss"] for row in progress.history]
    assert losses[-1] < losses[0] and progress.best["val_acc"] > 0.3, progress.history  # chance is 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_a_tiny_run_learns_on_cuda():
    tiny_run_learns(torch.device("cuda"))
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32


@pytest.mark.skipif(not torch.backends.mps.is_available(), reason="needs an Apple GPU (MPS); none on this machine")
def test_a_tiny_run_learns_on_mps():
    tiny_run_learns(torch.device("mps"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_on_cuda_no_step_synchronises_with_the_host(monkeypatch):
    """torch's sync debug mode raises at any synchronising call in the steps; the checks every
    CHECK_EVERY batches are let through. The first epoch warms up (cuDNN's autotuning)."""
    monkeypatch.setattr(training, "CHECK_EVERY", 3)
    device = torch.device("cuda")
    p = loop_params(augment={"flip": True, "shift": 2, "erase": 0.5})
    state = build(p, 256, device, pick_dtype("auto", device))
    x, y = (to_device(t, device) for t in tiny())
    train_epoch(state, x, y, 1, p)
    check = training._check

    def check_allowed(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("default")
        try:
            return check(*args, **kwargs)
        finally:
            last = len(args[1]) == args[3]  # losses so far == n_batches: the epoch's end syncs too
            torch.cuda.set_sync_debug_mode("default" if last else "error")

    monkeypatch.setattr(training, "_check", check_allowed)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_epoch(state, x, y, 2, p)
    finally:
        torch.cuda.set_sync_debug_mode("default")


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
