"""Knowledge distillation losses (Hinton et al., 2015)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 so that its gradient
    magnitude does not shrink as T grows."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    p_teacher = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


class LogitsDistillation:
    """A training criterion: alpha * KD(teacher) + (1 - alpha) * the task's label loss."""

    def __init__(self, teacher: nn.Module, label_loss: Callable, alpha: float, temperature: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.label_loss = label_loss
        self.alpha = alpha
        self.temperature = temperature

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        student = model(x)
        with torch.no_grad():
            teacher = self.teacher(x)
        soft = kd_loss(student, teacher, self.temperature)
        return self.alpha * soft + (1 - self.alpha) * self.label_loss(student, y)
