"""Knowledge distillation: logits KD (Hinton et al., 2015) and feature KD on named layers (FitNets-style).

A `Distillation` is a training criterion, ``loss = criterion(model, x, y)``, and an ``nn.Module``: its
1x1 adapters (student channels -> teacher channels, where a pruned layer is narrower than the
teacher's) are trained with the student and thrown away afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from compress.distributed import unwrap
from compress.schema import FeatureKD
from targets.base import EdgecompError


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, scaled by T^2 so that its gradient
    magnitude does not shrink as T grows."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    p_teacher = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


@contextmanager
def capture(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named submodules during the forward passes inside the block."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise EdgecompError(f"distill.features: no module named {', '.join(map(repr, missing))} in the model")
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name in names
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class Distillation(nn.Module):
    """alpha * KD(teacher outputs) + (1 - alpha) * label loss + sum of weighted feature MSEs.

    The output term is the task's (`Task.distill`): logits KD for a classifier, per-anchor class and box
    KD for a detector; feature KD on named layers is the same for both.
    """

    def __init__(
        self,
        teacher: nn.Module,
        label_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        alpha: float,
        temperature: float,
        features: list[FeatureKD] | None = None,
        student: nn.Module | None = None,
        example: torch.Tensor | None = None,
        output_kd: Callable[..., torch.Tensor] = kd_loss,
    ) -> None:
        super().__init__()
        self.teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, never trained or saved
        self.label_loss = label_loss
        self.output_kd = output_kd
        self.alpha = alpha
        self.temperature = temperature
        self.features = features or []
        self.adapters = nn.ModuleList()
        if self.features:
            if student is None or example is None:
                raise ValueError("feature KD needs the student and an example input to size its adapters")
            self._build_adapters(student, example)

    def _apply(self, fn, recurse: bool = True):  # .to(device) moves the teacher with the adapters
        self.teacher[0]._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _pairs(self) -> tuple[list[str], list[str]]:
        return [f.student for f in self.features], [f.teacher or f.student for f in self.features]

    @torch.no_grad()
    def _build_adapters(self, student: nn.Module, example: torch.Tensor) -> None:
        student_names, teacher_names = self._pairs()
        with capture(student.eval(), student_names) as s, capture(self.teacher[0], teacher_names) as t:
            student(example)
            self.teacher[0](example)
        for s_name, t_name in zip(student_names, teacher_names, strict=True):
            s_out, t_out = s[s_name], t[t_name]
            if s_out.shape[2:] != t_out.shape[2:]:
                raise EdgecompError(f"distill.features: {s_name} and {t_name} differ in spatial size")
            same = s_out.shape[1] == t_out.shape[1]
            self.adapters.append(nn.Identity() if same else nn.Conv2d(s_out.shape[1], t_out.shape[1], 1, bias=False))

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        student_names, teacher_names = self._pairs()
        with capture(unwrap(model), student_names) as s_feats:  # hooks inside DDP's wrapper
            student = model(x)
        with torch.no_grad(), capture(self.teacher[0], teacher_names) as t_feats:
            teacher = self.teacher[0](x)
        loss = self.alpha * self.output_kd(student, teacher, self.temperature)
        loss = loss + (1 - self.alpha) * self.label_loss(student, y)
        for spec, adapter, s_name, t_name in zip(
            self.features, self.adapters, student_names, teacher_names, strict=True
        ):
            loss = loss + spec.weight * F.mse_loss(adapter(s_feats[s_name]), t_feats[t_name])
        return loss
