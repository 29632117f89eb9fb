from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from compress.registry import Registry


class Task(Protocol):
    name: str
    metric: str  # the name of the score in results.json, e.g. "top1"

    def loss(self, label_smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss of model outputs against labels."""
        ...

    def score(self, outputs: list[np.ndarray], labels: np.ndarray) -> float:
        """The task metric in [0, 1] of a whole split's outputs."""
        ...

    def parity(self, reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        """How far a runtime's outputs are from PyTorch's on the same inputs."""
        ...


TASKS: Registry[Task] = Registry("task")
