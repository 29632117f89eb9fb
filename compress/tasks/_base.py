from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from compress.registry import Registry

Outputs = torch.Tensor | Sequence[torch.Tensor]  # what a model returns: one tensor, or a tuple of them
Loss = Callable[[Outputs, torch.Tensor], torch.Tensor]


class Task(Protocol):
    name: str
    metric: str  # the headline score in results.json ("top1", "map50"): the rows' `accuracy`
    outputs: tuple[str, ...]  # what the model's outputs are, in order; written into every exported file

    def loss(self, model: nn.Module, label_smoothing: float) -> Loss:
        """The training loss of `model`'s outputs against labels (a detector's loss needs its anchors)."""
        ...

    def distill(self, student: Outputs, teacher: Outputs, temperature: float) -> torch.Tensor:
        """The output-level distillation term: logits KD for a classifier, per-anchor KD for a detector."""
        ...

    def score(self, outputs: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
        """The metrics in [0, 1] of a whole split's outputs (any runtime's), the headline under `metric`."""
        ...

    def correct(self, outputs: list[np.ndarray], labels: np.ndarray) -> np.ndarray | None:
        """Per sample, whether the model got it right, where the headline metric is the mean of that (top-1);
        None where it is not (mAP): the report's paired tests and intervals need it."""
        ...

    def score_with_interval(
        self, outputs: list[np.ndarray], labels: np.ndarray
    ) -> tuple[dict[str, float], tuple[float, float] | None]:
        """`score`, and a 95% interval of the headline metric where `correct` cannot give one (mAP: a bootstrap
        over the images); None where it can (top-1: the report's Wilson interval from the per-image results)."""
        ...

    def uninformed(self, num_classes: int) -> tuple[float, float] | None:
        """(loss, headline metric) of a model that ignores its input, which a collapsed training stage sits at
        (`compress.collapse`): (ln C, 1 / C) for a classifier; None where no fixed point exists (a detector)."""
        ...

    def parity(self, reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        """How far a runtime's outputs are from PyTorch's on the same inputs: max_abs_diff (checked against
        the target's tolerance), mean_abs_diff, top1_agreement."""
        ...


TASKS: Registry[Task] = Registry("task")
