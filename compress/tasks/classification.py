"""Image classification: cross-entropy, top-1 accuracy, parity on logits."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.collapse import uniform_point
from compress.distill import kd_loss
from compress.tasks._base import TASKS, Loss


class Classification:
    name = "classification"
    metric = "top1"
    outputs = ("logits",)

    def loss(self, model: nn.Module, label_smoothing: float) -> Loss:
        return partial(F.cross_entropy, label_smoothing=label_smoothing)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return kd_loss(student, teacher, temperature)

    def score(self, outputs: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
        return {"top1": float(np.mean(self.correct(outputs, labels)))}

    def correct(self, outputs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
        return outputs[0].argmax(axis=1) == labels

    def score_with_interval(self, outputs: list[np.ndarray], labels: np.ndarray) -> tuple[dict[str, float], None]:
        return self.score(outputs, labels), None  # the rows keep `correct`: the report's Wilson interval

    def uninformed(self, num_classes: int) -> tuple[float, float] | None:
        return uniform_point(num_classes)

    def parity(self, reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        diff = np.abs(reference[0].astype(np.float64) - outputs[0])
        return {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float(np.mean(reference[0].argmax(axis=1) == outputs[0].argmax(axis=1))),
        }


TASKS.register("classification")(Classification())
