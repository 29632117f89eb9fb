"""The one training loop: dense training, fine-tuning, distillation and the scratch baselines all use it.

What differs between them is passed in (the criterion, the epochs, the learning rate), never a flag
that the loop branches on, so every candidate is trained by the same code.
"""

from __future__ import annotations

import math
import os
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from compress.data import make_loader
from compress.distributed import (
    all_gather,
    check_global_batch,
    cpu_share,
    is_main,
    mean,
    rank,
    resolve_device,
    shard,
    shards_are_disjoint,
    world_size,
)
from compress.schema import TrainSpec
from targets.base import EdgecompError

Criterion = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
# Part of every trained stage's cache key (`compress.candidates`): bumped when the same recipe trains to other
# weights (a fix to the loop, the losses or the data order), so a run made before trains again.
VERSION = 1


def seed_everything(seed: int) -> None:
    """One seed drives torch, numpy and Python's random, and so the data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def supervised(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Criterion:
    """The plain criterion: the task's loss of the model's outputs against the labels."""
    return lambda model, x, y: loss(model(x), y)


@dataclass(frozen=True)
class Fit:
    """What one training run does: how long, how fast, against what."""

    epochs: int
    lr: float
    criterion: Criterion
    label: str  # shown in the progress bar
    # training batches only: (images, their indices in the training set, epoch) -> augmented images
    augment: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None


def _optimizer(modules: list[nn.Module], spec: TrainSpec, lr: float) -> torch.optim.Optimizer:
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # BN and biases: weight decay only hurts
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel per step instead of a loop of small ops per parameter: on the CPU an AdamW step of
    # the detection quickstart's SSDLite takes 3 ms instead of 15 (5% of a training step).
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=spec.momentum > 0, fused=fused)


def _lr_at(step: int, total: int, base: float, schedule: str) -> float:
    if schedule == "constant" or total == 0:
        return base
    return 0.5 * base * (1 + math.cos(math.pi * step / total))


@contextmanager
def stop_between_batches() -> Iterator[Callable[[], None]]:
    """Ctrl-C during training finishes the batch in flight, then the returned check raises KeyboardInterrupt,
    so no optimizer step is half done; a second Ctrl-C interrupts at once."""
    # Signal handlers live in the main thread; a process started with Ctrl-C ignored (nohup, `&`) keeps ignoring it.
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield lambda: None
        return
    requested: list[int] = []

    def on_sigint(signum: int, frame: object) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    def check() -> None:
        if requested:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def _epoch_batches(train_set: Dataset, batch_size: int, seed: int, epoch: int) -> tuple[DataLoader, list[int] | None]:
    """One epoch's shuffled batches for this worker and, with several workers, the sample indices it draws.

    Alone, the order is the seeded shuffle of the whole set. With N workers, DistributedSampler reshuffles per
    epoch (same seed on every rank) and deals each rank a disjoint 1/N of it; drop_last trims the remainder so
    that every rank takes the same number of steps (DDP's all-reduces pair up step by step).
    """
    workers = world_size()
    if workers == 1:
        return make_loader(train_set, batch_size, shuffle=True, seed=seed + epoch), None
    sampler = DistributedSampler(train_set, num_replicas=workers, rank=rank(), shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    index = list(sampler)
    return make_loader(train_set, batch_size // workers, sampler=index), index


def _autocast(device: torch.device, amp: str):
    """Mixed precision where it pays: CUDA only (on CPUs without AMX, bf16 is slower than fp32)."""
    if amp == "none" or device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _average_gradients(parameters: list[nn.Parameter]) -> None:
    """All-reduce the gradients of trained parameters outside the DDP-wrapped model (distillation adapters)."""
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size())


def fit(model: nn.Module, train_set: Dataset, batch_size: int, spec: TrainSpec, job: Fit) -> dict[str, Any]:
    """Train `model` in place, on this process's device and data shard; returns the last epoch's mean loss,
    the epochs run and, with several workers, the audit of their data shards. The model comes back on the CPU.

    `batch_size` is global: each of N workers steps on batch_size / N samples, so the optimizer sees the same
    batch and the recipe's learning rate holds for any N (scale lr linearly with batch_size, Goyal et al.).
    """
    workers = world_size()
    check_global_batch(batch_size, workers)
    seed_everything(spec.seed)
    torch.set_num_threads(cpu_share(cpu_threads()))
    steps_per_epoch = len(train_set) // batch_size if workers > 1 else math.ceil(len(train_set) / batch_size)
    total = job.epochs * steps_per_epoch
    step, epoch_loss, disjoint = 0, float("nan"), []
    with frozen_batch_norm(model, spec.freeze_bn) as batch_norm_to_eval, _progress() as progress:
        stepper = _Stepper(model, spec, job)  # after freezing: frozen weights stay out of the optimizer and DDP
        model.train()
        batch_norm_to_eval()
        bar = progress.add_task(job.label, total=total, loss=float("nan"))
        with stop_between_batches() as stop_if_interrupted:
            for epoch in range(job.epochs):
                losses = []
                batches, drawn = _epoch_batches(Indexed(train_set), batch_size, spec.seed, epoch)
                for x, y, index in batches:
                    x = job.augment(x, index, epoch) if job.augment is not None else x
                    losses.append(stepper.step(x, y, _lr_at(step, total, job.lr, spec.schedule)))
                    step += 1
                    progress.update(bar, advance=1, loss=losses[-1])
                    stop_if_interrupted()
                epoch_loss = mean(float(np.mean(losses)))
                if drawn is not None:
                    disjoint.append(shards_are_disjoint(drawn, len(train_set)))
        stepper.finish()
    metrics: dict[str, Any] = {"epochs": job.epochs, "final_loss": epoch_loss}
    if workers > 1:
        metrics["workers"] = _shard_audit(disjoint, workers, len(train_set))
    return metrics


class _Stepper:
    """One optimizer step at a time on this process's device: the model (DDP-wrapped with several workers),
    the criterion's own trained parameters (distillation adapters), the optimizer and the loss scaler."""

    def __init__(self, model: nn.Module, spec: TrainSpec, job: Fit) -> None:
        self.model, self.spec, self.criterion = model, spec, job.criterion
        self.device = resolve_device(spec.device)
        self.memory_format = torch.channels_last if spec.channels_last else torch.contiguous_format
        self.criterion_module = job.criterion if isinstance(job.criterion, nn.Module) else None
        model.to(self.device, memory_format=self.memory_format)
        extra = [self.criterion_module] if self.criterion_module is not None else []
        for module in extra:  # distillation: its adapters train with the model, its teacher moves along
            module.to(self.device)
        self.optimizer = _optimizer([model, *extra], spec, job.lr)
        self.outside_ddp = [p for module in extra for p in module.parameters() if p.requires_grad]
        self.net = model
        if world_size() > 1:
            self.net = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=spec.amp == "fp16" and self.device.type == "cuda")

    def step(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        with _autocast(self.device, self.spec.amp):
            loss = self.criterion(self.net, x, y.to(self.device, non_blocking=True))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if world_size() > 1:
            _average_gradients(self.outside_ddp)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.item()

    def finish(self) -> None:
        """The model (in eval mode) and the criterion back on the CPU."""
        self.model.eval().to("cpu", memory_format=torch.contiguous_format)
        if self.criterion_module is not None:
            self.criterion_module.to("cpu")


class Indexed(Dataset):
    """A dataset's samples with their indices, (x, y, index): augmentation draws from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        x, y = self.dataset[index]
        return x, y, index


@contextmanager
def frozen_batch_norm(model: nn.Module, enabled: bool = True) -> Iterator[Callable[[], None]]:
    """`train.freeze_bn`: inside the block the batch norm layers' weights take no gradient, and the returned
    call puts the layers back in eval mode (running statistics used, not updated) after `model.train()`.

    As timm's `freeze_batch_norm_2d` and torchvision's detection backbones (FrozenBatchNorm2d), but the layers
    stay BatchNorm2d, so pruning, checkpoints and exports see the model they saw before; the weights take
    gradients again after the block. A traced graph (TFLite's QAT model) has no BN modules: refused.
    """
    if not enabled:
        yield lambda: None
        return
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    if not layers and _has_batch_norm_ops(model):
        raise EdgecompError(
            "train.freeze_bn: this model is a traced graph (TFLite's QAT) whose batch norm is no module to "
            "freeze; drop tflite from qat.targets, or unset train.freeze_bn"
        )
    frozen = [p for layer in layers for p in layer.parameters(recurse=False) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)

    def to_eval() -> None:
        for layer in layers:
            layer.eval()

    try:
        yield to_eval
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _progress() -> Progress:
    """The training bar (rank 0 only), gone when the stage ends."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
        transient=True,
        disable=not is_main(),
    )


def _shard_audit(epochs: list[dict], workers: int, train_samples: int) -> dict[str, Any]:
    """The audit of the workers' data shards over the epochs: disjoint, and all but the remainder seen."""
    return {
        "count": workers,
        "shards_disjoint": all(audit["disjoint"] for audit in epochs),
        "samples_seen_per_epoch": min((audit["covered"] for audit in epochs), default=0),
        "train_samples": train_samples,
    }


def _has_batch_norm_ops(model: nn.Module) -> bool:
    graph = getattr(model, "graph", None)
    return isinstance(model, torch.fx.GraphModule) and any("batch_norm" in str(node.target) for node in graph.nodes)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> tuple[list[np.ndarray], np.ndarray]:
    """The model's outputs on a whole split (as numpy, like a runtime's) and the split's labels."""
    model.eval()
    outputs, labels = [], []
    for x, y in make_loader(dataset, batch_size):
        out = model(x)
        outputs.append([o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])])
        labels.append(y.numpy())
    return [np.concatenate(parts) for parts in zip(*outputs, strict=True)], np.concatenate(labels)


def predict_sharded(model: nn.Module, dataset: Dataset) -> tuple[list[np.ndarray], np.ndarray]:
    """`predict` with the split divided among the workers and the outputs gathered back in order: every rank
    gets exactly what one process would have computed, in a 1/N of the time."""
    index = list(shard(len(dataset)))
    parts = [part for part in all_gather(predict(model, Subset(dataset, index)) if index else None) if part]
    outputs = [np.concatenate(chunks) for chunks in zip(*(part[0] for part in parts), strict=True)]
    return outputs, np.concatenate([part[1] for part in parts])
