"""Structured (channel) pruning over torch-pruning.

torch-pruning traces the model's dependency graph, so removing a channel of one conv removes it
from every layer coupled to it: the BN after it, the depthwise conv that follows, the residual
partner. The result is a smaller dense model that every runtime speeds up, unlike sparse masks.

Importance criteria are a flat registry of small factories (``IMPORTANCE``): a recipe names one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn

from compress.recipe import PruneSpec
from compress.registry import Registry
from targets.base import EdgecompError

IMPORTANCE: Registry[Callable[[], tp.importance.Importance]] = Registry("importance criterion")
IMPORTANCE.register("l1")(lambda: tp.importance.GroupMagnitudeImportance(p=1))
IMPORTANCE.register("l2")(lambda: tp.importance.GroupMagnitudeImportance(p=2))
IMPORTANCE.register("random")(tp.importance.RandomImportance)
IMPORTANCE.register("bn_scale")(tp.importance.BNScaleImportance)
IMPORTANCE.register("lamp")(tp.importance.LAMPImportance)
IMPORTANCE.register("taylor")(tp.importance.GroupTaylorImportance)

NEEDS_GRADIENTS = {"taylor"}


def output_layer(model: nn.Module) -> nn.Module:
    """The last Linear or Conv2d in module order: the classifier, whose outputs are the classes."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise EdgecompError("the model has no Linear or Conv2d layer to prune")
    return layers[-1]


def _ignored(model: nn.Module, names: list[str]) -> list[nn.Module]:
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise EdgecompError(f"prune.ignore: no module named {', '.join(map(repr, missing))} in the model")
    return [output_layer(model)] + [modules[name] for name in names]


def _accumulate_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss) -> None:
    model.zero_grad(set_to_none=True)
    model.train()
    for x, y in batches:
        loss(model(x), y).backward()
    model.eval()


def prune(
    model: nn.Module,
    example: torch.Tensor,
    spec: PruneSpec,
    gradient_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    loss: Callable | None = None,
) -> nn.Module:
    """Prune `model` in place to `spec.ratio` channel sparsity, in `spec.iterative_steps` steps.

    Criteria in NEEDS_GRADIENTS are given fresh gradients from `gradient_batches()` before each step.
    """
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=IMPORTANCE.get(spec.importance)(),
        pruning_ratio=spec.ratio,
        iterative_steps=spec.iterative_steps,
        global_pruning=spec.global_pruning,
        round_to=spec.round_to,
        ignored_layers=_ignored(model, spec.ignore),
    )
    for _ in range(spec.iterative_steps):
        if spec.importance in NEEDS_GRADIENTS:
            if gradient_batches is None or loss is None:
                raise EdgecompError(f"importance {spec.importance!r} needs training batches for its gradients")
            _accumulate_gradients(model, gradient_batches(), loss)
        pruner.step()
    model.zero_grad(set_to_none=True)
    return model
