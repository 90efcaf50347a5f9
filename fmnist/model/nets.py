"""Classifiers for 1x28x28 images, chosen by name with `train.model` in params.yaml.

    model = build_model("cnn3v2")   # logits of shape (N, 10) for input (N, 1, 28, 28)
    python -m fmnist.model.nets     # the registered nets, one line each

A new net is one function here, registered with `@register`: the params check
(`build_model`), the README's table and the tests read ARCHITECTURES.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.core.errors import ParamError, did_you_mean

# name -> function(num_classes) -> net, in the order `register` met them (the default first).
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {}


def register(net: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    """Make `net` a value of train.model, under its function's name."""
    ARCHITECTURES[net.__name__] = net
    return net


def _conv_bn_relu(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift.
    return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


@register
def cnn(num_classes: int = 10) -> nn.Sequential:
    """The previous default: two 5x5 conv-BN-ReLU blocks and a small MLP head.

    Sized for a laptop CPU: about 3.0M multiply-adds per image, so an epoch of
    55,000 images takes seconds, not minutes, on two cores.
    """
    return nn.Sequential(
        *_conv_bn_relu(1, 16, 5), nn.MaxPool2d(2),       # 16 x 14 x 14
        *_conv_bn_relu(16, 32, 5), nn.MaxPool2d(2),      # 32 x 7 x 7
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


def _conv_pool_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    # Max-pooling straight after the convolution, before BatchNorm and ReLU: those two
    # then work on a quarter of the pixels, which makes a step about 20% cheaper on a
    # CPU for the same accuracy.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def _cnn3(widths: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    a, b, c = widths
    return nn.Sequential(
        *_conv_pool_bn_relu(1, a),    # a x 14 x 14
        *_conv_pool_bn_relu(a, b),    # b x 7 x 7
        *_conv_pool_bn_relu(b, c),    # c x 3 x 3
        nn.Flatten(),
        nn.Linear(c * 3 * 3, 128), nn.ReLU(inplace=True), nn.Dropout(0.2),
        nn.Linear(128, num_classes),
    )


@register
def cnn3(num_classes: int = 10) -> nn.Sequential:
    """Three 3x3 conv-pool-BN-ReLU blocks (20, 48, 96 channels) and a small MLP head.

    The previous default, kept so that its models still load. About 4.0M multiply-adds
    per image (cnn: 3.0M).
    """
    return _cnn3((20, 48, 96), num_classes)


@register
def cnn3v2(num_classes: int = 10) -> nn.Sequential:
    """The default: cnn3 with 16, 48 and 128 channels.

    On a CPU a step costs about two thirds of cnn3's (bf16 on two cores: about 30 ms for
    256 images against 45), and it scores a little better (94.1% against 94.0% in 15
    epochs, three seeds): oneDNN's convolution and pooling kernels are much faster when
    the channel count is a multiple of 16, and the 28x28 and 14x14 maps of the first
    block are the bulk of the work, so the first block narrows to 16 channels and the
    cheap last one (3x3 maps) widens to 128.
    """
    return _cnn3((16, 48, 128), num_classes)


@register
def cnn3_small(num_classes: int = 10) -> nn.Sequential:
    """cnn3 with 16, 32 and 64 channels (2.0M multiply-adds): about twice as fast, for
    the `fast` profile."""
    return _cnn3((16, 32, 64), num_classes)


@register
def cnn6(num_classes: int = 10) -> nn.Sequential:
    """Six 3x3 convolutions in three blocks of 32, 64 and 128 channels; global max-pooling.

    Each block is cnn3's conv-pool-BN-ReLU followed by one more conv-BN-ReLU at the
    pooled size (airbench's layout for CIFAR-10), so the extra convolutions run on the
    14x14, 7x7 and 3x3 maps, where they are cheap; the head is a max over the last 3x3
    map and one linear layer. About 12M multiply-adds per image against cnn3v2's 4.3M, and
    a training step costs about 2.1 times cnn3v2's on two cores in bf16 (45 against 21 ms
    for 256 images). The most accurate net here for its time (docs/benchmark.md), and
    too slow for the default's budget.
    """
    return nn.Sequential(
        *_conv_pool_bn_relu(1, 32), *_conv_bn_relu(32, 32, 3),      # 32 x 14 x 14
        *_conv_pool_bn_relu(32, 64), *_conv_bn_relu(64, 64, 3),     # 64 x 7 x 7
        *_conv_pool_bn_relu(64, 128), *_conv_bn_relu(128, 128, 3),  # 128 x 3 x 3
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(128, num_classes, bias=False),
    )


class PatchWhitening(nn.Module):
    """A frozen 3x3 convolution that whitens the image's 3x3 patches (airbench's first layer).

    Its 9 filters are the eigenvectors of the covariance of the training images' 3x3
    patches, each divided by the square root of its eigenvalue, so the 9 outputs at a
    pixel are uncorrelated with unit variance; then the same 9 negated, so a ReLU after
    them keeps both signs: 18 channels. `fit` computes them once from training images
    before the first step (`fit_to_data`); they stay fixed, a buffer rather than a
    parameter, so the optimiser never moves them, and they are saved with the weights.
    The layer the net no longer has to learn is the one whose inputs are the most
    correlated (neighbouring pixels), which is what slows the first epochs down.
    """

    def __init__(self, size: int = 3, eps: float = 5e-4):
        super().__init__()
        self.size, self.eps = size, eps  # eps: added to each eigenvalue, so near-flat directions aren't blown up
        self.register_buffer("weight", torch.zeros(2 * size * size, 1, size, size))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set the filters from `x`, normalised images (N, 1, H, W): float64 on the CPU, so the same on any device."""
        patches = F.unfold(x.detach().cpu().double(), self.size).transpose(1, 2).reshape(-1, self.size ** 2)
        values, vectors = torch.linalg.eigh(torch.cov(patches.T))
        filters = (vectors.T / (values[:, None] + self.eps).sqrt()).view(-1, 1, self.size, self.size)
        self.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), padding=self.size // 2)


def fit_to_data(net: nn.Module, x: torch.Tensor) -> None:
    """Fit the parts of `net` that are computed from training data (its PatchWhitening) to `x`, normalised images."""
    for module in net.modules():
        if isinstance(module, PatchWhitening):
            module.fit(x)


@register
def cnn6w(num_classes: int = 10) -> nn.Sequential:
    """cnn6 with a frozen whitening layer instead of its first convolution.

    The first block is PatchWhitening (18 channels), max-pooling, BatchNorm and ReLU,
    then a convolution of those 18 channels to 32 at 14x14; the rest is cnn6. The
    whitened start validated better than cnn6's learnt one, and a step costs about a
    quarter less (the 14x14 convolution reads 18 channels instead of 32):
    docs/benchmark.md.
    """
    return nn.Sequential(
        PatchWhitening(), nn.MaxPool2d(2), nn.BatchNorm2d(18), nn.ReLU(inplace=True),
        *_conv_bn_relu(18, 32, 3),                                  # 32 x 14 x 14
        *_conv_pool_bn_relu(32, 64), *_conv_bn_relu(64, 64, 3),     # 64 x 7 x 7
        *_conv_pool_bn_relu(64, 128), *_conv_bn_relu(128, 128, 3),  # 128 x 3 x 3
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(128, num_classes, bias=False),
    )


@register
def lenet(num_classes: int = 10) -> nn.Sequential:
    """The LeNet-style net of PyTorch's "Training with PyTorch" tutorial (the benchmark's reference)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),   # 6 x 12 x 12
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 4 x 4
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def name_problem(name: str) -> str | None:
    """Why `name` can't be train.model (it isn't a registered net), or None."""
    if name in ARCHITECTURES:
        return None
    return (f"train.model: got {name!r}{did_you_mean(name, list(ARCHITECTURES))}, "
            f"expected one of {', '.join(ARCHITECTURES)}")


def check_name(name: str) -> None:
    """ParamError naming train.model unless `name` is a registered net."""
    problem = name_problem(name)
    if problem:
        raise ParamError(problem)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    check_name(name)
    return ARCHITECTURES[name](num_classes)


def weights_problem(state: object, net: nn.Module) -> str | None:
    """Why `state` can't be `net`'s weights, or None when it can.

    Stricter than `load_state_dict`, which converts dtypes and accepts NaN: the same keys,
    and for each a tensor of the same shape and dtype with only finite values.
    """
    if not isinstance(state, dict):
        return f"the weights are a {type(state).__name__}, not a dict of tensors"
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(map(str, set(state) - set(expected)))
    if missing or unexpected:
        return " and ".join(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                            for what, names in (("weights missing", missing), ("unexpected weights", unexpected))
                            if names)
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"weight {key} is a {type(value).__name__}, not a tensor"
        if value.shape != ref.shape or value.dtype != ref.dtype:
            return (f"weight {key} is {value.dtype} {tuple(value.shape)}, "
                    f"expected {ref.dtype} {tuple(ref.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"weight {key} holds NaN or infinite values"
    return None


if __name__ == "__main__":
    for name, net in ARCHITECTURES.items():
        print(f"{name:12} {(net.__doc__ or '').split(chr(10))[0]}")
