"""Where a training step's time goes: step time, achieved FLOP/s and the share of the peak, per net.

    python bench/step_time.py                           # every registered net, bf16 and fp32, this machine's threads
    python bench/step_time.py --nets cnn3v2 cnn6 --dtypes bf16 --threads 1 2
    python bench/step_time.py --profile cnn6            # torch.profiler's table of one step's operators

A step is the loop's own: a batch of 256 random images in channels_last, forward under
autocast, label-smoothed cross-entropy, backward, SGD with Nesterov momentum. Its FLOPs
are counted by torch's FlopCounterMode (the convolutions' and matmuls' multiply-adds, x2:
forward, and the gradients of weights and inputs that backward computes); the step time
is the median of STEPS steps after WARMUP. The peak is measured, not quoted: the better of
a 4096 x 4096 matmul and a large 3x3 convolution in the same dtype and thread count, the
best this CPU and torch's kernels reach on a large, regular problem. Writes a Markdown
table to stdout (docs/benchmark.md has the last).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fmnist.model.nets import ARCHITECTURES, build_model

BATCH = 256
WARMUP, STEPS = 5, 30
DTYPES = {"bf16": torch.bfloat16, "fp32": None}


def make_step(name: str, dtype: torch.dtype | None):
    """A closure running one training step of `name` on a fixed random batch."""
    torch.manual_seed(0)
    net = build_model(name).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(BATCH, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
    return step


def seconds(fn, warmup: int = WARMUP, steps: int = STEPS, best: bool = False) -> float:
    """Median (best: shortest) wall time of `fn` over `steps` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) if best else statistics.median(times)


def peak_flops(dtype: torch.dtype | None, n: int = 4096) -> float:
    """The attainable peak in `dtype` (None: fp32): the better FLOP/s of an n x n matmul and of
    a large 3x3 convolution (channels_last, forward), the kernels a step runs. Both are
    measured: torch's fp32 matmul (MKL) is far from the peak on some CPUs where oneDNN's
    convolutions are not, so neither alone is the machine's best. The shortest of 10 runs:
    a peak is what the machine can do, not what it does on average."""
    torch.manual_seed(0)
    a, b = (torch.randn(n, n, dtype=dtype or torch.float32) for _ in range(2))
    matmul = 2 * n ** 3 / seconds(lambda: a @ b, warmup=2, steps=10, best=True)
    side = max(4, n // 128)  # 32 x 32 maps for the default n
    x = torch.randn(64, 128, side, side, dtype=dtype or torch.float32).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3, dtype=dtype or torch.float32).contiguous(memory_format=torch.channels_last)
    conv_seconds = seconds(lambda: F.conv2d(x, w, padding=1), warmup=2, steps=10, best=True)
    conv = 2 * 64 * 128 * 128 * 9 * side * side / conv_seconds
    return max(matmul, conv)


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per net (after WARMUP)")
    parser.add_argument("--peak-size", type=int, default=4096, help="n of the n x n matmul that measures the peak")
    parser.add_argument("--profile", choices=list(ARCHITECTURES), help="print one net's operator table instead")
    args = parser.parse_args()
    if args.profile:
        step = make_step(args.profile, DTYPES[args.dtypes[0]])
        seconds(step, steps=1)
        with torch.profiler.profile() as prof:
            for _ in range(10):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        return
    print("| net | dtype | threads | step (ms) | GFLOP a step | achieved (GFLOP/s) | peak (GFLOP/s) | of the peak |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            peak = peak_flops(dtype, args.peak_size)
            for name in args.nets:
                step = make_step(name, dtype)
                flops, t = step_flops(step), seconds(step, warmup=min(WARMUP, args.steps), steps=args.steps)
                print(f"| {name} | {dtype_name} | {threads} | {t * 1e3:.1f} | {flops / 1e9:.2f} | "
                      f"{flops / t / 1e9:.0f} | {peak / 1e9:.0f} | {flops / t / peak:.0%} |", flush=True)


if __name__ == "__main__":
    main()
