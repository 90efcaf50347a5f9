"""Training on several processes or machines: torchrun, DistributedDataParallel, shards.

    check_nproc(nproc, device)                 # before any process starts: fewer processes, or the CPU
    world, device = init_distributed(device)   # World(rank=0, size=1) when run alone
    model = wrap_ddp(model, device, world)     # DDP across the processes; unchanged alone
    order = shard(order, world.rank, world.size)

With `train.nproc: N` the train stage relaunches itself under torchrun as N processes
(`relaunch_under_torchrun`); it can also be launched by torchrun directly, on one or
several machines. NCCL on CUDA (one GPU per process), Gloo on CPU; not on MPS. Every
rank trains on an equal shard of each epoch's order; rank 0 alone scores, logs and
writes files.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fmnist.core.errors import ParamError, PeersLost, PipelineError, Terminated

STORE_TIMEOUT = timedelta(minutes=30)  # how long ranks wait for each other to start (Gloo's default)


@dataclass(frozen=True)
class World:
    """Where this process stands in a torchrun launch; rank 0 of 1 when run alone.

    `restart` is how many times torchrun has restarted the workers (the highest
    TORCHELASTIC_RESTART_COUNT of all ranks: each node's agent counts its own).
    """
    rank: int = 0
    size: int = 1
    restart: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def check_nproc(nproc: int, device: torch.device, param: str = "train.nproc") -> None:
    """ParamError unless `nproc` processes on this machine can train on `device`.

    On CUDA each process takes a GPU of its own (more processes than GPUs would fail in
    `torch.cuda.set_device`, "invalid device ordinal", once per process and restart).
    MPS trains as one process: Gloo, the backend torch 2.14 maps mps to, serves CPU and
    CUDA tensors only (`Backend.backend_capability`), so DDP would fail.
    """
    if nproc == 1 or device.type == "cpu":
        return
    instead = f"or train.device: cpu to train with {nproc} CPU processes"
    if device.type == "mps":
        raise ParamError(f"{param}: got {nproc}, but mps trains as one process (Gloo, torch's only process group "
                         f"backend for mps, takes CPU and CUDA tensors only); use 1, {instead}")
    gpus = torch.cuda.device_count()
    if nproc > gpus:
        raise ParamError(f"{param}: got {nproc}, but this machine has {gpus} CUDA GPU{'s' * (gpus != 1)} and each "
                         f"process trains on one of its own; use at most {gpus}, {instead}")


def init_distributed(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, Gloo on CPU), if any.

    Returns this process's World and its device (cuda:LOCAL_RANK on a multi-GPU node).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if world_size == 1:
        return World(restart=restart), device
    # Launched by torchrun directly: as many processes on this machine as --nproc_per_node says.
    check_nproc(int(os.environ.get("LOCAL_WORLD_SIZE", world_size)), device, "torchrun --nproc_per_node")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    rank = int(os.environ["RANK"])
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # The store torchrun's agent serves outlives the workers: see _fresh_namespace.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                              is_master=False, timeout=STORE_TIMEOUT)
        dist.init_process_group(backend, store=_fresh_namespace(store, rank, world_size), rank=rank,
                                world_size=world_size)
    else:
        dist.init_process_group(backend)
    restarts = torch.tensor([restart], device=device)
    dist.all_reduce(restarts, op=dist.ReduceOp.MAX)
    return World(dist.get_rank(), dist.get_world_size(), int(restarts)), device


def _fresh_namespace(store: dist.Store, rank: int, world_size: int, poll: float = 0.05) -> dist.Store:
    """A part of torchrun's store that no earlier attempt of this run has written to.

    torchrun's c10d rendezvous (--standalone, multi-node) keeps one store for the
    agent's whole life, and torch 2.14 hands it to the workers of every attempt
    without a per-attempt prefix. After a restart, the keys the dead workers' process
    group wrote (each rank's Gloo address, NCCL's unique id) are still there, and the
    new workers connect to the dead ones (Gloo connectFullMesh: connection refused).
    TORCHELASTIC_RESTART_COUNT can't name the attempt, because each node's agent
    counts its own restarts. So rank 0 draws a random name and gives it to each rank
    under a key named by a nonce that rank has just drawn: nothing stale can answer.
    Polls rather than blocks, so SIGTERM from the agent is handled at once.
    """
    def wait_for(key: str) -> None:
        deadline = time.monotonic() + STORE_TIMEOUT.total_seconds()
        while not store.check([key]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {rank}: no answer from the other ranks in {STORE_TIMEOUT} ({key})")
            time.sleep(poll)

    if rank != 0:
        nonce = uuid.uuid4().hex
        store.set(f"fmnist/ask/{rank}", nonce)
        wait_for(f"fmnist/answer/{nonce}")
        name = store.get(f"fmnist/answer/{nonce}").decode()
        store.set(f"fmnist/{name}/ready/{rank}", "1")
        return dist.PrefixStore(f"fmnist/{name}", store)
    name = uuid.uuid4().hex
    answered: dict[int, bytes] = {}
    waiting = set(range(1, world_size))
    deadline = time.monotonic() + STORE_TIMEOUT.total_seconds()
    while waiting:
        for r in sorted(waiting):
            if store.check([f"fmnist/{name}/ready/{r}"]):
                waiting.discard(r)
            elif store.check([f"fmnist/ask/{r}"]):
                nonce = store.get(f"fmnist/ask/{r}")
                if answered.get(r) != nonce:  # may be a dead worker's: answering it is harmless
                    store.set(f"fmnist/answer/{nonce.decode()}", name)
                    answered[r] = nonce
        if waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank 0: ranks {sorted(waiting)} did not join in {STORE_TIMEOUT}")
            time.sleep(poll)
    return dist.PrefixStore(f"fmnist/{name}", store)


def per_rank_batch(batch_size: int, world_size: int = 1) -> int:
    """Images each of `world_size` processes takes a step: `train.batch_size` is the global batch."""
    return max(1, batch_size // world_size)


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s part of an epoch's order: every rank gets len(order) // world_size items.

    Equal shards give every rank the same number of steps, which DDP needs (each step
    waits for all ranks); the len(order) % world_size items left over sit this epoch out.
    """
    return order[:len(order) - len(order) % world_size][rank::world_size]


def steps_per_epoch(n_train: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps in one epoch, on every rank: its shard in batches of per_rank_batch."""
    return -(-(n_train // world_size) // per_rank_batch(batch_size, world_size))


def wrap_ddp(model: torch.nn.Module, device: torch.device, world: World) -> torch.nn.Module:
    """`model` under DistributedDataParallel when there are several processes; as it is alone."""
    if world.size == 1:
        return model
    # On CPU, one gradient bucket per parameter: DDP otherwise starts with one bucket and
    # re-forms it in gradient-ready order after its first step, so a restarted run (a new
    # DDP) would add 3+ ranks' gradients in another order, and differ in the last bits.
    # SyncBatchNorm (CUDA) updates every rank's running statistics alike from the global
    # batch: DDP's broadcast of rank 0's buffers before every forward would copy them onto
    # themselves (forward_sync_buffers, torch 2.14's name for broadcast_buffers; the buffers
    # are still made alike once, at the start). Plain BatchNorm (CPU) keeps it.
    synced = any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   bucket_cap_mb_list=[0] if device.type == "cpu" else None,
                                   forward_sync_buffers=not synced)


def peers_lost(exc: RuntimeError, world: World) -> PeersLost | None:
    """The PeersLost a Gloo or NCCL transport error means in a run of several processes
    (a peer died), or None when `exc` is something else."""
    if world.size == 1 or isinstance(exc, PipelineError) or not (
            isinstance(exc, dist.DistError) or "gloo" in str(exc).lower()):
        return None
    reason = re.sub(r"^\[[^]]*\]\s*", "", " ".join(str(exc).split())).split(". ")[0][:160]  # no source path
    return PeersLost(f"rank {world.rank} of {world.size} lost the other training processes ({reason}); "
                     f"the first error above is the cause. With torchrun --max-restarts they all restart "
                     f"and resume from the last checkpoint")


def relaunch_under_torchrun(nproc: int, max_restarts: int) -> None:
    """Run the running script (sys.argv) as `nproc` processes under torchrun's agent,
    restarting them all up to `max_restarts` times when one fails.

    The agent runs in this process (not a `torchrun` child), so Ctrl-C, SIGTERM and a
    worker's failure end in this stage's one line rather than in torchrun's traceback.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    argv = ["--standalone", f"--nproc_per_node={nproc}", f"--max-restarts={max_restarts}", *sys.argv]
    print(f"launching {nproc} processes: torchrun {' '.join(argv)}", flush=True)
    try:
        torchrun(get_args_parser().parse_args(argv))
    except SignalException as exc:  # the agent has stopped the workers by now
        raise (KeyboardInterrupt() if exc.sigval == signal.SIGINT else Terminated()) from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise PipelineError(f"training process {rank} failed (exit code {failure.exitcode}) after "
                            f"train.max_restarts = {max_restarts} restart(s); the first error above says why") from None
