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
from copy import deepcopy
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
LATENCY_PROBES = 6  # bisection steps of a latency target: the channel ratio to within 0.95 / 64


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
    if kind == "latency":
        raise EdgecompError("a latency target is a MACs fraction found by measurement first: see search_latency")
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


@dataclass(frozen=True)
class LatencySearch:
    """What a latency target resolved to: the smallest channel ratio (of those tried) whose pruned model's
    measured p50 on the target is within the latency asked."""

    asked_ms: float
    dense_ms: float
    ratio: float  # of channels removed per layer, as a `ratio` target prunes
    macs: float  # the fraction of the dense MACs that ratio left
    reached_ms: float
    probes: list[tuple[float, float, float]]  # (ratio tried, its MACs fraction, its p50 ms)

    def as_dict(self) -> dict:
        return {
            "asked_ms": round(self.asked_ms, 4),
            "dense_ms": round(self.dense_ms, 4),
            "ratio": round(self.ratio, 4),
            "macs": round(self.macs, 4),
            "reached_ms": round(self.reached_ms, 4),
            "probes": [[round(value, 4) for value in probe] for probe in self.probes],
        }


def search_latency(
    model: nn.Module,
    example: torch.Tensor,
    spec: PruneSpec,
    latency_of: Callable[[nn.Module], float],
    gradient_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    loss: Callable | None = None,
    probes: int = LATENCY_PROBES,
) -> LatencySearch:
    """The channel ratio that meets `spec.latency` (a fraction of the dense model's p50, `latency_of` measuring
    a model in the target's runtime), by bisection: each probe prunes a copy of `model` by a ratio with the
    spec's criterion in one step and times its exported file. Latency is not proportional to MACs
    (memory-bound depthwise layers, runtime kernels that prefer some channel counts), so it is measured, not
    predicted. `model` is left as it is."""
    dense_ms, dense_macs = latency_of(model), count(model, example)[0]
    asked = spec.latency * dense_ms
    low, high, best, tried = 0.0, MAX_RATIO, None, []
    for _ in range(probes):
        ratio = (low + high) / 2
        copy = prune(deepcopy(model), example, _as_ratio(spec, ratio), gradient_batches, loss)
        ms = latency_of(copy)
        tried.append((ratio, count(copy, example)[0] / dense_macs, ms))
        if ms <= asked:
            best = tried[-1] if best is None or ratio < best[0] else best
            high = ratio
        else:
            low = ratio
    if best is None:
        raise EdgecompError(
            f"prune.latency={spec.latency:g} on {spec.measured_on}: {asked:.3f} ms asked (dense {dense_ms:.3f} ms), "
            f"but the fastest pruned model tried ran at {min(ms for *_, ms in tried):.3f} ms; ask for a larger fraction"
        )
    return LatencySearch(asked, dense_ms, best[0], best[1], best[2], tried)


def _as_ratio(spec: PruneSpec, ratio: float) -> PruneSpec:
    """`spec` with its latency target replaced by a channel ratio, pruned in one go (a probe is not fine-tuned)."""
    return spec.model_copy(update={"latency": None, "measured_on": None, "ratio": ratio, "iterative_steps": 1})


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
