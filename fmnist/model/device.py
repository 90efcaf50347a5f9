"""Where the numbers are computed: the device, the autocast dtype, moving nets and tensors there.

    device = pick_device("auto")              # cuda, then mps, then cpu
    dtype = pick_dtype("auto", device)        # bf16 where the hardware has it natively, else None (fp32)
    net = to_device_layout(net, device)       # channels_last on `device`
    with autocast(device, dtype):
        logits = net(x)

The one place that picks a device: the train and evaluate stages call `pick_device`
with `train.device` and pass its result down explicitly.
"""

from __future__ import annotations

import contextlib

import torch

from fmnist.core.errors import ParamError
from fmnist.params import DEVICES


def pick_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; a named device that isn't there is an error."""
    has = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if has[kind]))
    if name not in has:
        raise ParamError(f"train.device: got {name!r}, expected one of {', '.join(DEVICES)}")
    if not has[name]:
        raise ParamError(f"train.device: {name} was asked for but this machine has no {name} device; "
                         f"use 'auto' or 'cpu'")
    return torch.device(name)


def _cpu_has_bf16() -> bool:
    try:  # AVX512-BF16 or AMX; without them bf16 convolutions run slower than fp32
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision`: None means plain fp32.

    `auto` takes bf16 where the hardware runs it natively (CUDA GPUs from Ampere on,
    CPUs with AVX512-BF16 or AMX), about twice as fast there as fp32; fp32 elsewhere.
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and _cpu_has_bf16():
            return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def placement(device: torch.device, dtype: torch.dtype | None, asked: str) -> str:
    """Where and how a run computes, for its first line: "cpu (picked by train.device: auto) with bf16 autocast"."""
    picked = " (picked by train.device: auto)" if asked == "auto" else ""
    return f"{device.type}{picked}" + (" with bf16 autocast" if dtype else " in fp32")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device`; to a GPU from pinned memory without blocking the host."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_device_layout(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`net` on `device` in channels_last layout: faster convolutions on CPU and GPU."""
    return net.to(device, memory_format=torch.channels_last)
