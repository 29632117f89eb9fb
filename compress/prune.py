"""Structured (channel) pruning over torch-pruning.

torch-pruning traces the model's dependency graph, so removing a channel of one conv removes it
from every layer coupled to it: the BN after it, the depthwise conv that follows, the residual
partner. The result is a smaller dense model that every runtime speeds up, unlike sparse masks.

Importance criteria are a flat registry of small factories (``IMPORTANCE``): a recipe names one.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from compress.measure import count
from compress.models import output_layers
from compress.registry import Registry
from compress.schema import PruneSpec
from targets.base import EdgecompError

IMPORTANCE: Registry[Callable[[], tp.importance.Importance]] = Registry("importance criterion")
IMPORTANCE.register("l1")(lambda: tp.importance.GroupMagnitudeImportance(p=1))
IMPORTANCE.register("l2")(lambda: tp.importance.GroupMagnitudeImportance(p=2))
IMPORTANCE.register("random")(tp.importance.RandomImportance)
IMPORTANCE.register("bn_scale")(tp.importance.BNScaleImportance)
IMPORTANCE.register("lamp")(tp.importance.LAMPImportance)
IMPORTANCE.register("taylor")(tp.importance.GroupTaylorImportance)

NEEDS_GRADIENTS = {"taylor"}
FINE_STEPS = 100  # resolution of macs / params targets
MAX_RATIO = 0.95  # no layer loses more of its channels than this


def _ignored(model: nn.Module, names: list[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise EdgecompError(f"prune.ignore: no module named {', '.join(map(repr, missing))} in the model")
    return output_layers(model) + [modules[name] for name in names]


def _accumulate_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss) -> None:
    model.zero_grad(set_to_none=True)
    model.train()
    for x, y in batches:
        loss(model(x), y).backward()
    model.eval()


def _layer_ratios(model: nn.Module, patterns: dict[str, float]) -> dict[nn.Module, float]:
    """Per-layer ratios by module-name glob; a pattern that matches no prunable layer is a user error."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    ratios: dict[nn.Module, float] = {}
    for pattern, ratio in patterns.items():
        matched = [m for name, m in layers.items() if fnmatch.fnmatchcase(name, pattern)]
        if not matched:
            raise EdgecompError(f"prune.layer_ratios: {pattern!r} matches no Conv2d or Linear layer")
        ratios.update(dict.fromkeys(matched, ratio))
    return ratios


@dataclass
class _Stepper:
    """One torch-pruning MetaPruner and what each of its steps needs (fresh gradients for Taylor)."""

    model: nn.Module
    pruner: tp.pruner.MetaPruner
    steps: int
    spec: PruneSpec
    gradient_batches: Callable[[], Iterable] | None
    loss: Callable | None

    def step(self, gradient_batch_count: int) -> bool:
        """Prune one step; False when the pruner's schedule is exhausted."""
        if self.pruner.current_step >= self.steps:
            return False
        if self.spec.importance in NEEDS_GRADIENTS:
            if self.gradient_batches is None or self.loss is None:
                raise EdgecompError(f"importance {self.spec.importance!r} needs training batches for its gradients")
            batches = itertools.islice(self.gradient_batches(), gradient_batch_count)
            _accumulate_gradients(self.model, batches, self.loss)
        self.pruner.step()
        self.model.zero_grad(set_to_none=True)
        return True


def prune(
    model: nn.Module,
    example: torch.Tensor,
    spec: PruneSpec,
    gradient_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    loss: Callable | None = None,
    between_steps: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Prune `model` in place to the spec's target in `spec.iterative_steps` steps, calling `between_steps`
    (e.g. a short fine-tune) after every step but the last.

    A `ratio` target removes that fraction of channels in every step's share. A `macs` or `params` target
    prunes in fine steps (about 1% of channels each) until the count falls to the asked fraction of the
    dense model's, so the result lands within a step of the target whatever the criterion.
    Criteria in NEEDS_GRADIENTS get fresh gradients from `gradient_batches()` before each step.
    """
    model.eval()
    kind, value = spec.target
    if kind == "ratio":
        stepper = _stepper(model, example, spec, value, spec.iterative_steps, gradient_batches, loss)
        for step in range(spec.iterative_steps):
            stepper.step(gradient_batch_count=4)
            if between_steps is not None and step < spec.iterative_steps - 1:
                between_steps(model)
        return model
    measure = (lambda: count(model, example)[0]) if kind == "macs" else (lambda: count(model, example)[1])
    dense = measure()
    stepper = _stepper(model, example, spec, MAX_RATIO, FINE_STEPS, gradient_batches, loss)
    milestones = [1 - (1 - value) * (i + 1) / spec.iterative_steps for i in range(spec.iterative_steps)]
    for i, milestone in enumerate(milestones):
        while measure() > milestone * dense:
            if not stepper.step(gradient_batch_count=1):
                raise EdgecompError(
                    f"prune.{kind}={value:g}: cannot go below {measure() / dense:.2f} of the dense {kind} by "
                    f"removing up to {MAX_RATIO:.0%} of each layer's channels; ask for a larger fraction"
                )
        if between_steps is not None and i < len(milestones) - 1:
            between_steps(model)
    return model


def _stepper(model, example, spec: PruneSpec, ratio: float, steps: int, gradient_batches, loss) -> _Stepper:
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=IMPORTANCE.get(spec.importance)(),
        pruning_ratio=ratio,
        pruning_ratio_dict=_layer_ratios(model, spec.layer_ratios) or None,
        iterative_steps=steps,
        global_pruning=spec.global_pruning,
        round_to=spec.round_to,
        ignored_layers=_ignored(model, spec.ignore),
    )
    return _Stepper(model, pruner, steps, spec, gradient_batches, loss)
