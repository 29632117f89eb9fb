"""Several training workers: torch.distributed with DistributedDataParallel, launched by torchrun.

A run with N workers is N copies of ``edgecomp run`` that find each other through torchrun's
rendezvous (its environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...), so ``edgecomp run
--nproc N``, ``torchrun --nproc_per_node=N -m cli run``, multi-node ``torchrun --nnodes ...
--rdzv-endpoint ...`` and SLURM or Kubernetes launchers that speak that rendezvous all start the
same thing. Every worker runs the training stages (each on its shard of every epoch, gradients
all-reduced by DDP); everything else (writing the run directory, exports, deployed evaluation,
benchmarks, the report) happens on rank 0 while the other workers wait or have left.

One process without torchrun is the world of one: every helper here is then a no-op, so the
single-machine path has no distributed code in it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from targets.base import EdgecompError

T = TypeVar("T")
DEVICES = ("auto", "cpu", "cuda")
TIMEOUT = timedelta(minutes=30)  # a collective that waits longer than this means a worker died


_alone: list[bool] = []  # non-empty inside `alone()`


def _joined() -> bool:
    return dist.is_available() and dist.is_initialized() and not _alone


def world_size() -> int:
    return dist.get_world_size() if _joined() else 1


def rank() -> int:
    return dist.get_rank() if _joined() else 0


@contextmanager
def alone() -> Iterator[None]:
    """Inside the block this process acts as a job of one: training on rank 0 after the other workers have
    returned (quantization-aware training in the export path) must not wait on collectives they never join."""
    _alone.append(True)
    try:
        yield
    finally:
        _alone.pop()


def is_main() -> bool:
    """Whether this process writes: rank 0 of a job, or the only process."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is a GPU, else the CPU; a worker of a job takes the GPU of its local rank."""
    if name not in DEVICES:
        raise EdgecompError(f"device {name!r}: expected one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgecompError("device cuda: no CUDA GPU is visible here; use device auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    # Modulo: a launcher may show each worker its own GPU alone (CUDA_VISIBLE_DEVICES), so LOCAL_RANK can exceed it.
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())


def check_launch(device: str, nproc: int) -> None:
    """What every one of `nproc` local workers would fail on, refused once by the launcher before any starts:
    an unknown or absent device, or more CUDA workers than GPUs (the workers all see the launcher's GPUs, so
    two would share one, which nccl refuses only after every worker has started and built its data)."""
    if resolve_device(device).type != "cuda":
        return
    gpus = torch.cuda.device_count()
    if nproc > gpus:
        raise EdgecompError(
            f"--nproc {nproc} with device {device}: {gpus} CUDA GPU{'s' * (gpus != 1)} visible here, and each CUDA "
            f"worker needs its own; use --nproc {gpus} or fewer, or --device cpu (gloo)"
        )


@contextmanager
def process_group(device: str = "auto") -> Iterator[None]:
    """Join the torchrun job this process belongs to (gloo on CPU, nccl on CUDA) for the block; alone, nothing."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield
        return
    target = resolve_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def cpu_share(threads: int) -> int:
    """Threads for one worker: the workers on one machine share its cores instead of oversubscribing them."""
    return max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def check_global_batch(batch_size: int, workers: int) -> None:
    """`data.batch_size` is the global batch: every worker must get the same share of it."""
    if batch_size % workers:
        raise EdgecompError(
            f"data.batch_size {batch_size} is the global batch and must divide evenly over {workers} workers"
        )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (module names and attributes are the inner ones)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's value on every rank (any picklable object)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: T) -> list[T]:
    """Every rank's value, in rank order (any picklable object)."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def mean(value: float) -> float:
    """The mean of a number over the ranks."""
    return float(np.mean(all_gather(value)))


def shard(n: int) -> range:
    """This rank's contiguous block of n items; blocks in rank order cover 0..n-1 once, so gathering them
    in rank order restores the original order exactly (unlike DistributedSampler, which pads)."""
    size, index = world_size(), rank()
    return range(index * n // size, (index + 1) * n // size)


def shards_are_disjoint(index: Sequence[int], n: int) -> dict[str, int | bool]:
    """Check, across the ranks, that the samples each drew are disjoint; a cheap audit written into the stage's
    metrics (one bit per sample crosses the wire, not the indices)."""
    seen = np.zeros(n, dtype=bool)
    seen[np.asarray(index, dtype=np.int64)] = True
    masks = [np.unpackbits(packed, count=n).astype(bool) for packed in all_gather(np.packbits(seen))]
    counts = np.sum(masks, axis=0)
    return {"disjoint": bool(counts.max(initial=0) <= 1), "covered": int((counts > 0).sum())}


def launch(argv: list[str], nproc: int) -> int:
    """Start `nproc` local workers running ``python -m cli <argv>`` through torchrun (standalone rendezvous);
    returns the first failed worker's exit code, or 0. The workers print their own errors."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent logs each failure with a traceback-shaped report; the failing worker has already said why.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun would set 1 thread per worker (and say so); the workers share the cores themselves (`cpu_share`).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "-m", "cli", *argv])
    try:
        run(args)
    except ChildFailedError as error:
        codes = [failure.exitcode for failure in error.failures.values()]
        return next((code for code in codes if code > 0), 1)
    return 0
