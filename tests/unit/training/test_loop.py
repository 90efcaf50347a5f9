"""fmnist/training/loop.py: the schedule, the loop's behaviour, determinism; no host sync in a step
(counted on the CPU, and on CUDA with torch's sync debug mode where there is one); a tiny run on CUDA
and on MPS where there is one."""

from __future__ import annotations

import copy
import math
import random
import re
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from fmnist.core.errors import ParamError, TrainingDiverged
from fmnist.model.classifier import Classifier, Evaluation, normalize, score
from fmnist.model.device import pick_dtype, to_device, to_device_layout
from fmnist.model.nets import build_model
from fmnist.params import Augment
from fmnist.training import loop
from fmnist.training import loop as training
from fmnist.training.augment import Augmentation
from fmnist.training.distributed import World, steps_per_epoch
from fmnist.training.ema import Ema
from fmnist.training.loop import TrainState, build, fit, lr_factor, seed_everything, train_epoch
from helpers.data import blank, synthetic, tiny, train_params

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
    """Validation accuracies 0.5, 0.9, 0.9, 0.7: epoch 3 is kept, with its weights (a tie
    goes to the later epoch, which trained longer; the last epoch, worse, does not replace
    it). The scores are scripted (the loop's `score` replaced) so that the best epoch is not
    the last whatever training does."""
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
    assert progress.epoch == 4 and progress.best["epoch"] == 3 and progress.best["val_acc"] == 0.9
    kept = progress.best["state_dict"]
    assert kept.keys() == weights[3].keys() and all(torch.equal(kept[k], weights[3][k]) for k in kept)
    assert not all(torch.equal(kept[k], weights[2][k]) for k in kept)  # not the first of the tied epochs
    assert not all(torch.equal(kept[k], weights[4][k]) for k in kept)  # training moved the weights after epoch 3


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
    state = build(p, x, CPU)
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
    state = build(p, tiny()[0], device, dtype)
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
    state = build(p, tiny()[0], device, pick_dtype("auto", device))
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
        state = build(p, x, CPU)
        loss, acc, _ = train_epoch(state, x, y, 1, p)
        assert state.scheduler.last_epoch == expected == steps_per_epoch(33, batch_size)
        assert math.isfinite(loss) and 0 <= acc <= 1


# --- the loop against one written out by hand, on a linear net and a few images (make mutate) ---

NO_AUGMENT = {"flip": False, "shift": 0, "erase": 0.0}


def linear(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))


def falling(step: int) -> float:
    return 1 / (1 + step)


def linear_state(net: torch.nn.Module, ema: Ema | None = None, dtype=None) -> TrainState:
    """SGD whose learning rate falls every step, so that a step or a schedule step left out shows."""
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    return TrainState(net, to_device_layout(net, CPU), opt, torch.optim.lr_scheduler.LambdaLR(opt, falling), ema,
                      CPU, dtype)


def test_an_epoch_is_the_classic_loop_over_the_epochs_order_in_batches():
    x, y = tiny(37, seed=3)  # batches of 8: four, then one of 5
    p = loop_params(batch_size=8, augment=NO_AUGMENT, label_smoothing=0.2, seed=4)
    net = linear()
    by_hand = copy.deepcopy(net)
    figures = train_epoch(linear_state(net), x, y, 2, p)

    opt = torch.optim.SGD(by_hand.parameters(), lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, falling)
    order = torch.randperm(37, generator=loop.epoch_generators(4, 2)[0])
    plain = smoothed = right = 0.0
    for b in range(5):
        idx = order[b * 8:(b + 1) * 8]
        logits = by_hand(normalize(x[idx].unsqueeze(1)))
        loss = F.cross_entropy(logits, y[idx], label_smoothing=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        plain += F.cross_entropy(logits.detach(), y[idx]).item() * len(idx)  # each batch weighs by its size
        smoothed += loss.item() * len(idx)
        right += (logits.argmax(1) == y[idx]).sum().item()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(net.parameters(), by_hand.parameters(), strict=True))
    assert figures.loss == pytest.approx(plain / 37, rel=1e-5)
    assert figures.loss_smoothed == pytest.approx(smoothed / 37, rel=1e-5)
    assert figures.acc == pytest.approx(right / 37) and figures.loss_smoothed > figures.loss  # smoothing costs


def test_an_epoch_in_bf16_autocast_is_not_the_fp32_one():
    x, y = tiny(16)
    p = loop_params(batch_size=8, augment=NO_AUGMENT)
    fp32, bf16 = linear(), linear()
    train_epoch(linear_state(fp32), x, y, 1, p)
    train_epoch(linear_state(bf16, dtype=torch.bfloat16), x, y, 1, p)
    assert not torch.equal(fp32[1].weight, bf16[1].weight)
    assert torch.allclose(fp32[1].weight, bf16[1].weight, atol=0.01)


def test_the_moving_average_is_updated_after_every_step():
    x, y = tiny(37)
    net = linear()
    ema = Ema(net, 0.9)
    train_epoch(linear_state(net, ema), x, y, 1, loop_params(batch_size=8, augment=NO_AUGMENT))
    assert ema.updates == 5 and not torch.equal(ema.module[1].weight, net[1].weight)


class Modes(torch.nn.Module):
    """Records whether each forward pass ran in training mode."""

    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def test_should_stop_is_asked_every_check_and_after_the_last_batch_in_training_mode_after(monkeypatch):
    monkeypatch.setattr(loop, "CHECK_EVERY", 3)
    x, y = tiny(37)
    modes = Modes()
    net = torch.nn.Sequential(modes, *linear())
    net.eval()  # as the stage may leave it: the epoch trains in training mode
    asked = []

    def should_stop(epoch, done):
        asked.append((epoch, done))
        net.eval()  # it may score something (the benchmark scores the test set)
        return False

    state = linear_state(net)
    assert train_epoch(state, x, y, 3, loop_params(batch_size=8, augment=NO_AUGMENT), should_stop) is not None
    assert asked == [(3, 3), (3, 5)] and modes.modes == [True] * 5


def test_an_epoch_asked_to_stop_ends_there_and_returns_nothing(monkeypatch):
    monkeypatch.setattr(loop, "CHECK_EVERY", 2)
    x, y = tiny(37)
    state = linear_state(linear())
    stopped = train_epoch(state, x, y, 1, loop_params(batch_size=8, augment=NO_AUGMENT), lambda e, done: done == 4)
    assert stopped is None and state.scheduler.last_epoch == 4  # 4 of the 5 steps taken


def test_the_bar_names_the_epoch_counts_batches_on_a_terminal_and_shows_the_loss(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, iterable, **kwargs):
            self.iterable, self.kwargs, self.postfix = iterable, kwargs, []
            bars.append(self)

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, **kwargs):
            self.postfix.append(kwargs)

    monkeypatch.setattr(loop, "tqdm", Bar)
    monkeypatch.setattr(loop, "CHECK_EVERY", 2)
    x, y = tiny(37)
    train_epoch(linear_state(linear()), x, y, 2, loop_params(batch_size=8, epochs=3, augment=NO_AUGMENT))
    [bar] = bars
    assert list(bar.iterable) == [0, 1, 2, 3, 4]
    assert bar.kwargs == {"desc": "epoch 2/3", "unit": "batch", "leave": False, "disable": None}
    assert len(bar.postfix) == 3 and all(re.fullmatch(r"\d+\.\d{4}", row["loss"]) for row in bar.postfix)


def test_an_epoch_of_no_images_is_a_param_error():
    with pytest.raises(ParamError, match=r"^train.nproc: 1 processes but only 0 training images$"):
        train_epoch(linear_state(linear()), *tiny(0), 1, loop_params(augment=NO_AUGMENT))


class NanAt(torch.nn.Module):
    """A linear net whose `at`-th forward pass gives NaN logits."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls, self.linear = at, 0, torch.nn.Linear(28 * 28, 10)

    def forward(self, x):
        self.calls += 1
        logits = self.linear(x.flatten(1))
        return logits * float("nan") if self.calls == self.at else logits


@pytest.mark.parametrize("at, check_every, batch", [(5, 50, 5), (3, 50, 3), (1, 2, 1), (2, 2, 2)])
def test_a_non_finite_loss_names_the_first_batch_it_happened_at(monkeypatch, at, check_every, batch):
    monkeypatch.setattr(loop, "CHECK_EVERY", check_every)
    x, y = tiny(37)
    with pytest.raises(TrainingDiverged) as err:
        train_epoch(linear_state(NanAt(at)), x, y, 2, loop_params(batch_size=8, augment=NO_AUGMENT))
    assert str(err.value) == (f"training diverged: the loss became non-finite at epoch 2, batch {batch} of 5; "
                              f"try a smaller train.lr")


def test_finite_losses_pass_the_check_and_the_first_non_finite_one_is_named():
    loop._check_finite(torch.tensor([1.0, 2.0]), 1, 2, World())
    with pytest.raises(TrainingDiverged, match=r"at epoch 3, batch 2 of 9;"):
        loop._check_finite(torch.tensor([1.0, float("inf"), float("nan")]), 3, 9, World())


def test_a_net_whose_batchnorm_statistics_overflowed_stops_the_run_though_the_losses_are_finite():
    """With a huge learning rate a BatchNorm's running variance can overflow while the loss,
    normalised by it, stays finite; the net must not be kept."""
    net = build_model("cnn3v2")
    loop._check_finite(torch.tensor([1.0, 2.0, 3.0]), 2, 9, World(), net)  # a fresh net is finite
    net[2].running_var[0] = float("inf")
    with pytest.raises(TrainingDiverged) as err:
        loop._check_finite(torch.tensor([1.0, 2.0, 3.0]), 2, 9, World(), net)
    assert str(err.value) == ("training diverged: a weight or BatchNorm statistic became non-finite at epoch 2, "
                              "by batch 3 of 9; try a smaller train.lr")
    with pytest.raises(TrainingDiverged, match=r"the loss became non-finite at epoch 2, batch 2 of 9;"):
        loop._check_finite(torch.tensor([1.0, float("nan"), 3.0]), 2, 9, World(), net)  # the loss is named first


@pytest.mark.parametrize("check_every, batch", [(50, 5), (2, 2)])
def test_an_epoch_whose_net_goes_non_finite_stops_at_the_next_check_though_its_losses_are_finite(
        monkeypatch, check_every, batch):
    """The epoch's checks look at the net too: an infinite running variance (what a huge learning
    rate can make) leaves every training loss finite, since training normalises by the batch's
    own statistics, and the run must stop all the same."""
    monkeypatch.setattr(loop, "CHECK_EVERY", check_every)
    seed_everything(0)
    net = build_model("cnn3v2")
    net[2].running_var[0] = float("inf")  # the running average stays infinite through every update
    x, y = tiny(37)
    with pytest.raises(TrainingDiverged) as err:
        train_epoch(plain_sgd(net, 0.01), x, y, 2, loop_params(batch_size=8, augment=NO_AUGMENT))
    assert str(err.value) == ("training diverged: a weight or BatchNorm statistic became non-finite at epoch 2, "
                              f"by batch {batch} of 5; try a smaller train.lr")


# --- the schedule, the optimiser, the state, the seeds -------------------------------------

def test_the_schedule_warms_up_linearly_then_anneals_by_a_cosine_to_its_end():
    assert lr_factor(0, 100) == pytest.approx(0.04)  # rise: the first 25 steps
    assert lr_factor(10, 100) == pytest.approx(0.04 + 0.96 * 10 / 25)
    assert lr_factor(25, 100) == 1.0  # the peak
    assert lr_factor(62, 100) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)  # half way down: (62 - 25) / 74
    assert lr_factor(99, 100) == pytest.approx(1e-3)  # the last step: the end
    assert lr_factor(120, 100) == pytest.approx(1e-3)  # past the last: stays there
    assert lr_factor(1, 10, warmup=0.5, start=0.2, end=0.1) == pytest.approx(0.2 + 0.8 / 5)
    assert lr_factor(9, 10, warmup=0.5, start=0.2, end=0.1) == pytest.approx(0.1)
    assert [lr_factor(s, 2) for s in (0, 1)] == [1.0, pytest.approx(1e-3)]  # round(0.5) == 0: no warm-up
    assert [lr_factor(s, 3) for s in (0, 1, 2)] == [pytest.approx(0.04), 1.0, pytest.approx(1e-3)]  # up, down


def test_sgd_with_nesterov_momentum_or_adamw_each_on_the_one_cycle_schedule():
    net = linear()
    sgd, schedule = loop.make_optimizer(train_params(optimizer="sgd", lr=0.2, momentum=0.9, weight_decay=0.01),
                                        net, 40)
    group = sgd.param_groups[0]
    assert type(sgd) is torch.optim.SGD and group["momentum"] == 0.9 and group["nesterov"] is True
    assert group["weight_decay"] == 0.01 and group["initial_lr"] == 0.2
    assert group["lr"] == pytest.approx(0.2 * lr_factor(0, 40))
    for _ in range(10):
        sgd.step()
        schedule.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor(10, 40))
    plain, _ = loop.make_optimizer(train_params(optimizer="sgd", momentum=0.0), net, 40)
    assert plain.param_groups[0]["nesterov"] is False  # Nesterov needs momentum
    adamw, schedule = loop.make_optimizer(train_params(optimizer="adamw", lr=0.01, momentum=0.8, weight_decay=0.05),
                                          net, 0)
    group = adamw.param_groups[0]
    assert type(adamw) is torch.optim.AdamW and group["betas"] == (0.8, 0.999) and group["weight_decay"] == 0.05
    assert group["lr"] == pytest.approx(0.01)  # 0 steps: scheduled as one, at the peak
    adamw.step()
    schedule.step()
    assert adamw.param_groups[0]["lr"] == pytest.approx(0.01)  # and after it: a run of one step stays there


def test_build_makes_the_params_net_its_optimiser_schedule_and_average(monkeypatch):
    p = train_params(model="lenet", epochs=3, batch_size=10, ema=0.0, compile=False)
    state = build(p, blank(45), CPU, torch.bfloat16)
    assert type(state.net) is type(build_model("lenet")) and state.model is state.net and state.ema is None
    assert state.device == CPU and state.dtype == torch.bfloat16 and state.world == World()
    total = 3 * 5  # 45 images in batches of 10: 5 steps an epoch
    assert [f(total - 1) for f in state.scheduler.lr_lambdas] == [lr_factor(total - 1, total)]
    assert state.optimizer.param_groups[0]["params"][0] is next(state.net.parameters())
    averaged = build(train_params(model="lenet", ema=0.99), blank(45), CPU)
    assert averaged.ema.decay == 0.99 and averaged.ema.module is not averaged.net
    compiled = []
    monkeypatch.setattr(loop.torch, "compile", lambda model: compiled.append(model) or "compiled")
    state = build(train_params(model="lenet", compile=True), blank(45), CPU)
    assert state.model == "compiled" and compiled == [state.net]


def test_build_keeps_batch_norm_as_it_is_on_the_cpu_even_for_several_processes(monkeypatch):
    monkeypatch.setattr(loop, "wrap_ddp", lambda model, device, world: model)  # no process group here
    state = build(train_params(model="cnn3v2"), blank(45), CPU, world=World(rank=0, size=2))
    kinds = {type(m).__name__ for m in state.net.modules()}
    assert "BatchNorm2d" in kinds and "SyncBatchNorm" not in kinds
    assert state.world == World(rank=0, size=2)


def test_seed_everything_seeds_pythons_numpys_and_torchs_generators():
    seed_everything(5)
    drawn = random.random(), np.random.rand(), torch.rand(1).item()  # noqa: S311 - a seed's draws, no secret
    seed_everything(5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == drawn  # noqa: S311 - as above


def test_each_epoch_has_one_order_on_every_rank_and_augmentation_and_dropout_of_its_own():
    def draws(seed, epoch, rank):
        order, aug = loop.epoch_generators(seed, epoch, rank)
        dropout = torch.rand(3)  # the global generator, seeded for dropout
        return torch.randperm(20, generator=order), torch.rand(3, generator=aug), dropout

    order, aug, dropout = draws(1, 2, 0)
    again = draws(1, 2, 0)
    assert torch.equal(order, again[0]) and torch.equal(aug, again[1]) and torch.equal(dropout, again[2])
    other_rank = draws(1, 2, 1)
    assert torch.equal(order, other_rank[0])
    assert not torch.equal(aug, other_rank[1]) and not torch.equal(dropout, other_rank[2])
    for other in (draws(1, 3, 0), draws(2, 2, 0)):
        assert not torch.equal(order, other[0]) and not torch.equal(aug, other[1])
    assert loop.epoch_generators(1, 2)[1].initial_seed() == loop.epoch_generators(1, 2, 0)[1].initial_seed()


# --- fit: the epochs, their figures, the best one, the average, resuming and stopping ------

def scripted(monkeypatch, accuracies, figures=None):
    """fit's train_epoch and score replaced: each epoch returns `figures` (or its own) and scores the next
    accuracy. Returns what each was called with."""
    calls = {"train": [], "score": []}
    accuracies = iter(accuracies)

    def train_epoch(state, images, labels, epoch, p, should_stop=None):
        calls["train"].append((epoch, should_stop))
        with torch.no_grad():
            for w in state.net.parameters():
                w.add_(1.0)  # each epoch moves the weights
        return figures or loop.EpochFigures(loss=epoch + 0.1, acc=epoch + 0.2, loss_smoothed=epoch + 0.3)

    def score(classifier, images, labels, **kwargs):
        calls["score"].append((classifier, kwargs))
        return Evaluation(loss=10.0 + len(calls["score"]), accuracy=next(accuracies), probs=torch.zeros(0, 10))

    monkeypatch.setattr(loop, "train_epoch", train_epoch)
    monkeypatch.setattr(loop, "score", score)
    return calls


def test_fit_records_each_epochs_figures_and_scores_the_plain_net_unmirrored(monkeypatch):
    calls = scripted(monkeypatch, [0.0, 0.3])
    net = linear()
    state = linear_state(net, dtype=torch.bfloat16)
    seen = []
    started = time.perf_counter()
    progress = loop.fit(state, tiny(8), tiny(4), loop_params(epochs=2), on_epoch=lambda p, s: seen.append((p, s)))
    elapsed = time.perf_counter() - started
    assert progress.history == [
        {"train/loss": 1.1, "train/loss_smoothed": 1.3, "train/acc": 1.2, "val/loss": 11.0, "val/acc": 0.0},
        {"train/loss": 2.1, "train/loss_smoothed": 2.3, "train/acc": 2.2, "val/loss": 12.0, "val/acc": 0.3}]
    classifier, kwargs = calls["score"][0]
    assert classifier.net is net and classifier.mirror is False
    assert kwargs == {"device": CPU, "batch_size": 1000, "dtype": torch.bfloat16}
    assert [s[0] is progress for s in seen] == [True, True]
    assert all(type(s[1]) is float and 0 <= s[1] <= elapsed for s in seen)  # each epoch's seconds, of the whole
    assert progress.epoch == 2 and progress.best["epoch"] == 2 and progress.best["val_acc"] == 0.3


def test_a_first_epoch_scoring_zero_is_kept_until_a_better_one(monkeypatch):
    scripted(monkeypatch, [0.0])
    progress = loop.fit(linear_state(linear()), tiny(8), tiny(4), loop_params(epochs=1))
    assert progress.best["epoch"] == 1 and progress.best["val_acc"] == 0.0 and progress.best["state_dict"]


def test_with_an_average_the_average_is_scored_and_kept_as_it_was_at_the_best_epoch(monkeypatch):
    calls = scripted(monkeypatch, [0.4, 0.6, 0.5])
    net = linear()
    ema = Ema(net, 0.9)
    snapshots = {}

    def on_epoch(progress, seconds):
        with torch.no_grad():
            for w in ema.module.parameters():
                w.add_(progress.epoch)  # the average moves too
        snapshots[progress.epoch] = {k: v.clone() for k, v in ema.module.state_dict().items()}

    progress = loop.fit(linear_state(net, ema), tiny(8), tiny(4), loop_params(epochs=3), on_epoch=on_epoch)
    assert all(classifier.net is ema.module for classifier, _ in calls["score"])
    kept = progress.best["state_dict"]
    assert progress.best["epoch"] == 2
    # as scored at epoch 2: before on_epoch moved it, and a copy that later epochs leave alone
    assert all(torch.equal(kept[k] + 2, snapshots[2][k]) for k in kept)


def test_fit_resumes_after_the_last_finished_epoch_and_keeps_a_better_earlier_best(monkeypatch):
    calls = scripted(monkeypatch, [0.5, 0.7])
    earlier = loop.Progress(epoch=2, history=[{"val/acc": 0.9}, {"val/acc": 0.8}],
                            best={"val_acc": 0.9, "epoch": 1, "state_dict": {"w": torch.zeros(1)}})
    progress = loop.fit(linear_state(linear()), tiny(8), tiny(4), loop_params(epochs=4), progress=earlier)
    assert [epoch for epoch, _ in calls["train"]] == [3, 4]
    assert progress is earlier and progress.epoch == 4 and len(progress.history) == 4
    assert progress.best["epoch"] == 1 and progress.best["val_acc"] == 0.9


def test_a_stopped_epoch_ends_fit_with_the_epochs_finished(monkeypatch):
    calls = scripted(monkeypatch, [0.5, 0.7])
    stop = object()
    finished = []

    def train_epoch(state, images, labels, epoch, p, should_stop=None):
        calls["train"].append((epoch, should_stop))
        return None if epoch == 2 else loop.EpochFigures(0.1, 0.2, 0.3)

    monkeypatch.setattr(loop, "train_epoch", train_epoch)
    progress = loop.fit(linear_state(linear()), tiny(8), tiny(4), loop_params(epochs=4), should_stop=stop,
                        on_epoch=lambda p, s: finished.append(p.epoch))
    assert calls["train"] == [(1, stop), (2, stop)] and finished == [1]
    assert progress.epoch == 1 and len(progress.history) == 1


def test_other_ranks_train_but_neither_score_nor_report(monkeypatch):
    calls = scripted(monkeypatch, [])
    state = linear_state(linear())
    state.world = World(rank=1, size=2)
    reported = []
    progress = loop.fit(state, tiny(8), tiny(4), loop_params(epochs=2), on_epoch=lambda p, s: reported.append(p))
    assert [epoch for epoch, _ in calls["train"]] == [1, 2] and calls["score"] == [] and reported == []
    assert progress.epoch == 2 and progress.history == [] and progress.best["epoch"] == 0


def test_under_torchrun_a_rank_trains_its_shard_of_the_order_augmented_its_own_way_and_sums_with_the_others(
        monkeypatch):
    """Rank 1 of 2 (no process group: the collectives are recorded): half of train.batch_size a step, the
    odd places of the epoch's order, flips drawn from rank 1's generator, the figures summed over ranks
    and the first non-finite batch agreed on; no bar but rank 0's."""
    reduced, bars = [], []
    monkeypatch.setattr(loop.dist, "all_reduce", lambda tensor, op=None: reduced.append((tensor.clone(), op)))

    class Bar(list):
        def set_postfix(self, **kwargs):
            pass

    monkeypatch.setattr(loop, "tqdm", lambda iterable, **kwargs: bars.append(kwargs) or Bar(iterable))
    x, y = tiny(37)
    seen = Modes()
    seen.forward = lambda batch: seen.modes.append(batch.clone()) or batch
    net = torch.nn.Sequential(seen, *linear())
    state = linear_state(net)
    state.world = World(rank=1, size=2)
    augment = {"flip": True, "shift": 0, "erase": 0.0}
    figures = train_epoch(state, x, y, 2, loop_params(batch_size=8, augment=augment, seed=3))

    order, aug = loop.epoch_generators(3, 2, rank=1)
    mine = torch.randperm(37, generator=order)[:36][1::2]  # 18 places: batches of 4, the last of 2
    assert [len(b) for b in seen.modes] == [4, 4, 4, 4, 2]
    drawn = Augmentation(Augment(**augment), len(mine), aug, CPU)  # the epoch's draws, for this rank's 18 images
    for b, batch in enumerate(seen.modes):
        rows = slice(b * 4, (b + 1) * 4)
        assert torch.equal(batch, drawn(normalize(x[mine[rows]].unsqueeze(1)), rows))
    [(check, op), (totals, _)] = reduced
    assert op == torch.distributed.ReduceOp.MIN and check.tolist() == [5, 5]  # no bad loss nor weight: past the last
    assert totals[3].item() == 18 and figures.acc == pytest.approx(totals[1].item() / 18)
    assert bars[0]["disable"] is True


def test_on_gpus_several_processes_normalise_batches_together_one_alone(monkeypatch):
    """SyncBatchNorm for several processes on CUDA (Gloo on the CPU has none); placed and wrapped for `device`
    and `world` (both recorded here: no GPU, no process group needed), with the steps of one rank's shard."""
    calls = []
    monkeypatch.setattr(loop, "configure", lambda device: calls.append(("configure", device)))  # process-wide
    monkeypatch.setattr(loop, "to_device_layout", lambda net, device: calls.append(("layout", device)) or net)
    monkeypatch.setattr(loop, "wrap_ddp", lambda model, device, world: calls.append(("ddp", device, world)) or model)
    cuda, two = torch.device("cuda"), World(rank=0, size=2)
    state = build(train_params(model="cnn3v2", epochs=2, batch_size=10), blank(41), cuda, world=two)
    kinds = {type(m).__name__ for m in state.net.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
    assert calls == [("configure", cuda), ("layout", cuda), ("ddp", cuda, two)]
    total = 2 * steps_per_epoch(41, 10, 2)  # 20 images a rank in batches of 5: 4 steps an epoch (5 alone)
    assert total == 8 and state.scheduler.lr_lambdas[0](total - 1) == lr_factor(total - 1, total)
    alone = build(train_params(model="cnn3v2"), blank(41), cuda)
    assert "SyncBatchNorm" not in {type(m).__name__ for m in alone.net.modules()}
