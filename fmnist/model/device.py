"""Where the numbers are computed: the device, the autocast dtype, the GPU's settings, moving nets and tensors there.

    device = pick_device("auto")              # cuda, then mps, then cpu
    dtype = pick_dtype("auto", device)        # bf16 where the hardware runs it natively, else None (fp32)
    configure(device)                         # fp32 is IEEE fp32 (no TF32); cuDNN picks its kernels by timing
    net = to_device_layout(net, device)       # channels_last on `device`
    with autocast(device, dtype):
        logits = net(x)

The one place that decides about hardware: the train stage calls `pick_device` with
`train.device` and passes its result down explicitly. The evaluate stage scores on the
CPU in fp32 (SCORING_DEVICE), whatever trained the model, so its figures don't depend
on the machine.

Native bf16 (`native_bf16`): CUDA GPUs of compute capability 8.0 or above (Ampere on;
a T4 or V100, 7.x, emulates it and cuDNN has no bf16 convolutions there), CPUs with
AVX512-BF16 or AMX (x86) or the BF16 extension (Arm) when torch has oneDNN to use them.
Not MPS: torch 2.14 doesn't report the Apple GPU's family, so native bf16 can't be told
from emulated there, and a Mac trains in fp32.
"""

from __future__ import annotations

import contextlib

import torch

from fmnist.core.errors import ParamError
from fmnist.params import DEVICES

SCORING_DEVICE = torch.device("cpu")  # the evaluate stage's: fp32 on any CPU gives the same figures
CUDA_BF16_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores, and cuDNN's bf16 convolutions


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


def _cpu_has_native_bf16() -> bool:
    """bf16 instructions in this CPU (torch.cpu.get_capabilities, cpuinfo's flags) and oneDNN in torch to use them.

    Not torch's own `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: it answers yes for
    AVX-512 CPUs without BF16 too (as with DNNL_MAX_CPU_ISA=AVX512_CORE), where oneDNN
    emulates bf16 and convolutions run slower than in fp32.
    """
    flags = torch.cpu.get_capabilities()
    native = flags.get("avx512_bf16", False) or flags.get("amx_bf16", False) or flags.get("bf16", False)
    return bool(native) and torch.backends.mkldnn.is_available()


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively (see the module's docstring); emulated bf16 is slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= CUDA_BF16_CAPABILITY
    if device.type == "cpu":
        return _cpu_has_native_bf16()
    return False


def device_name(device: torch.device, *notes: str) -> str:
    """The device as messages name it, with `notes`: "cpu", "cuda:0 (Tesla T4, compute capability 7.5)"."""
    name = device.type
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name, notes = f"cuda:{index}", (f"{torch.cuda.get_device_name(index)}, compute capability {major}.{minor}",
                                        *notes)
    return f"{name} ({'; '.join(notes)})" if notes else name


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device`: None means plain fp32.

    `auto` takes bf16 where `device` runs it natively, about twice as fast there as fp32,
    and fp32 elsewhere. `bf16` where it would be emulated is an error: slower than fp32
    and no more accurate.
    """
    if precision == "fp32" or (precision == "auto" and not native_bf16(device)):
        return None
    if precision == "bf16" and not native_bf16(device):
        why = ("can't be checked for native bf16 (torch doesn't report the Apple GPU's family)" if device.type == "mps"
               else "would only emulate it (native bf16: CUDA compute capability 8.0 or above, CPUs with AVX512-BF16 "
                    "or AMX)")
        raise ParamError(f"train.precision: bf16 was asked for but {device_name(device)} {why}; use 'auto' or 'fp32'")
    return torch.bfloat16


def configure(device: torch.device) -> None:
    """Process-wide settings for computing on `device`: fp32 without TF32, cuDNN autotuning on CUDA.

    TF32 off: fp32 (train.precision: fp32, or auto on a GPU without native bf16) means
    IEEE fp32, as on a CPU; by default torch 2.14 would run cuDNN's fp32 convolutions in
    TF32 (10-bit mantissas) on Ampere and later. Speed on those GPUs comes from bf16
    autocast instead (`auto`). The legacy flags, not `fp32_precision`: torch 2.14 refuses
    to read the legacy ones (inductor does) once the two APIs are mixed.
    cudnn.benchmark: every batch has the same shape (but an epoch's last), so timing
    cuDNN's kernels once per shape pays for itself within the first epoch.
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def placement(device: torch.device, dtype: torch.dtype | None, asked: str) -> str:
    """Where and how a run computes, for its first line: "cpu (picked by train.device: auto) with bf16 autocast",
    "cuda:0 (NVIDIA L4, compute capability 8.9; picked by train.device: auto) with bf16 autocast"."""
    picked = ("picked by train.device: auto",) if asked == "auto" else ()
    return device_name(device, *picked) + (" with bf16 autocast" if dtype else " in fp32")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device`; to a GPU from pinned memory without blocking the host.

    A plain `.to("cuda")` from ordinary memory waits for the GPU to finish its queued work
    (torch synchronises the stream after such a copy): a host sync.
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_device_layout(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`net` on `device` in channels_last layout: faster convolutions on CPU and GPU."""
    return net.to(device, memory_format=torch.channels_last)
