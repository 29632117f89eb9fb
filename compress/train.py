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
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn
from torch.utils.data import Dataset

from compress.data import make_loader
from compress.recipe import TrainSpec

Criterion = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


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


def _optimizer(modules: list[nn.Module], spec: TrainSpec, lr: float) -> torch.optim.Optimizer:
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # BN and biases: weight decay only hurts
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, nesterov=spec.momentum > 0)


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


def fit(model: nn.Module, train_set: Dataset, batch_size: int, spec: TrainSpec, job: Fit) -> dict[str, float]:
    """Train `model` in place; returns the last epoch's mean loss and the epochs run."""
    seed_everything(spec.seed)
    torch.set_num_threads(cpu_threads())
    # A criterion that is a module (distillation adapters) trains with the model.
    trained = [model] + ([job.criterion] if isinstance(job.criterion, nn.Module) else [])
    optimizer = _optimizer(trained, spec, job.lr)
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total = job.epochs * steps_per_epoch
    step, epoch_loss = 0, float("nan")
    model.train()
    with (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TimeRemainingColumn(),
            transient=True,
        ) as progress,
        stop_between_batches() as stop_if_interrupted,
    ):
        bar = progress.add_task(job.label, total=total, loss=float("nan"))
        for epoch in range(job.epochs):
            losses = []
            for x, y in make_loader(train_set, batch_size, shuffle=True, seed=spec.seed + epoch):
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, total, job.lr, spec.schedule)
                loss = job.criterion(model, x, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                step += 1
                progress.update(bar, advance=1, loss=losses[-1])
                stop_if_interrupted()
            epoch_loss = float(np.mean(losses))
    model.eval()
    return {"epochs": job.epochs, "final_loss": epoch_loss}


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
