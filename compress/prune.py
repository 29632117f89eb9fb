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
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from compress import latency_table
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
# Part of every prune stage's cache key (`compress.candidates`): bumped when the same spec and parent prune to
# another network, so a run made before prunes again instead of loading the old architecture.
# 2 (2026-12-01): round_to no longer rounds a layer's channels above its ratio.
VERSION = 2


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
    shares: dict[str, float] | None = None,
) -> nn.Module:
    """Prune `model` in place to the spec's target in `spec.iterative_steps` steps, calling `between_steps`
    (e.g. a short fine-tune) after every step but the last.

    With `shares` (a `compress.latency_table.LatencyTable`'s, by group root name), a ratio target's value is the
    level at which `latency_table.group_ratios` shares channels out: more from the groups that cost more latency.

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
        stepper = _stepper(model, example, spec, value, spec.iterative_steps, gradient_batches, loss, shares)
        for step in range(spec.iterative_steps):
            stepper.step(gradient_batch_count=4)
            if between_steps is not None and step < spec.iterative_steps - 1:
                between_steps(model)
        return model
    measure = (lambda: count(model, example)[0]) if kind == "macs" else (lambda: count(model, example)[1])
    dense = measure()
    stepper = _stepper(model, example, spec, MAX_RATIO, FINE_STEPS, gradient_batches, loss, shares)
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
class ProbeTiming:
    """A pruned probe's p50 and the dense model's, taken in one interleaved timing (`compress.candidates.
    timed_against`): their ratio is what a latency target is checked against. The dense model timed once, minutes
    before a probe, would put whatever the machine's speed did in between (load, drift) into the ratio."""

    probe_ms: float
    dense_ms: float

    @property
    def fraction(self) -> float:
        """The probe's p50 as a fraction of the dense model's."""
        return self.probe_ms / self.dense_ms


@dataclass(frozen=True)
class Probe:
    """One step of a latency search: a channel ratio tried, and how its pruned model measured."""

    ratio: float  # of channels removed per layer, as a `ratio` target prunes
    macs: float  # the fraction of the dense MACs that ratio left
    timing: ProbeTiming

    def as_list(self) -> list[float]:
        return [round(v, 4) for v in (self.ratio, self.macs, self.timing.probe_ms, self.timing.dense_ms)]


@dataclass(frozen=True)
class LatencySearch:
    """What a latency target resolved to: the smallest channel ratio (of those tried) whose pruned model's
    measured p50 on the target, over the dense model's in the same timing, is within the fraction asked."""

    asked: float  # the fraction of the dense p50 asked
    found: Probe  # the probe whose ratio the stage prunes to, its timing the mean of its two (`_confirmed`)
    probes: list[Probe]  # the bisection's, in order
    again: list[Probe] = field(default_factory=list)  # second timings of the probes that met the target
    table: latency_table.LatencyTable | None = None  # allocation: latency's, which every probe pruned by

    @property
    def shares(self) -> dict[str, float] | None:
        """What `prune` shares channels out by: None for a uniform ratio."""
        return self.table.shares() if self.table else None

    def as_dict(self) -> dict:
        found = self.found
        return {
            "asked": self.asked,
            "allocation": "latency" if self.table else "uniform",
            "ratio": round(found.ratio, 4),
            "macs": round(found.macs, 4),
            "reached": round(found.timing.fraction, 4),
            "reached_ms": round(found.timing.probe_ms, 4),
            "dense_ms": round(found.timing.dense_ms, 4),  # in the same two timings as reached_ms
            "probes": [probe.as_list() for probe in self.probes],  # ratio, MACs fraction, p50 ms, dense p50 ms
            "again": [probe.as_list() for probe in self.again],
        } | ({"table": self.table.as_dict()} if self.table else {})


def search_latency(
    model: nn.Module,
    example: torch.Tensor,
    spec: PruneSpec,
    timed_against_dense: Callable[[nn.Module], ProbeTiming],
    gradient_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    loss: Callable | None = None,
    probes: int = LATENCY_PROBES,
) -> LatencySearch:
    """The channel ratio that meets `spec.latency` (a fraction of the dense model's p50), by bisection: each probe
    prunes a copy of `model` by a ratio with the spec's criterion in one step, and `timed_against_dense` times it
    in the target's runtime together with `model` (`ProbeTiming`). Latency is not proportional to MACs
    (memory-bound depthwise layers, runtime kernels that prefer some channel counts), so it is measured, not
    predicted. The ratio found is then timed once more (`_confirmed`). `model` is left as it is.

    With `spec.allocation` "latency", a latency table is measured first (`compress.latency_table.measure`, all its
    probes in one timing when `timed_against_dense` has a `many` method) and every probe prunes by it: the ratio
    is then the level at which channels are shared out, more from the groups that cost more latency."""
    dense_macs = count(model, example)[0]
    table = None
    if spec.allocation == "latency":
        many = getattr(timed_against_dense, "many", None) or (
            lambda models, _: [timed_against_dense(m) for m in models]
        )
        ignored = lambda copy: _ignored(copy, spec.ignore)  # noqa: E731
        table = latency_table.measure(model, example, ignored, spec.round_to, spec.measured_on, many)
    shares = table.shares() if table else None
    low, high, tried, met = 0.0, MAX_RATIO, [], {}
    for _ in range(probes):
        ratio = (low + high) / 2
        copy = prune(deepcopy(model), example, as_ratio(spec, ratio), gradient_batches, loss, shares=shares)
        tried.append(Probe(ratio, count(copy, example)[0] / dense_macs, timed_against_dense(copy)))
        if tried[-1].timing.fraction <= spec.latency:
            met[ratio] = copy
            high = ratio
        else:
            low = ratio
    if not met:
        fastest = min(tried, key=lambda probe: probe.timing.fraction).timing
        raise EdgecompError(
            f"prune.latency={spec.latency:g} on {spec.measured_on}: the fastest pruned model tried ran at "
            f"{fastest.fraction:.3f} of the dense p50 ({fastest.probe_ms:.3f} ms vs {fastest.dense_ms:.3f} ms, "
            "timed together); ask for a larger fraction"
        )
    found, again = _confirmed([p for p in tried if p.ratio in met], met, spec.latency, timed_against_dense)
    return LatencySearch(spec.latency, found, tried, again, table)


def _confirmed(
    met: list[Probe], models: dict[float, nn.Module], latency: float, timed: Callable[[nn.Module], ProbeTiming]
) -> tuple[Probe, list[Probe]]:
    """The least pruned of the probes that `met` the target whose second timing agrees, and the re-timings.

    Bisection keeps the smallest ratio whose one timing came in under the target: of the probes near the
    boundary, the one that noise favoured (the winner's curse). The MobileNetV2 x0.5 at 224 px searched to 0.5
    on OpenVINO read 0.54-0.56 of the dense p50 in the run's own timing. Timing it again, with independent
    noise, and holding the mean of both readings to the target removes that bias; a probe that misses moves
    the choice to the next more pruned one that met the target (the most pruned, last, is kept regardless)."""
    again = []
    for probe in sorted(met, key=lambda p: p.ratio):
        second = timed(models[probe.ratio])
        timing = ProbeTiming(
            (probe.timing.probe_ms + second.probe_ms) / 2, (probe.timing.dense_ms + second.dense_ms) / 2
        )
        again.append(Probe(probe.ratio, probe.macs, second))
        if timing.fraction <= latency or probe.ratio == max(models):
            return Probe(probe.ratio, probe.macs, timing), again
    raise AssertionError("unreachable: the most pruned probe is kept")


def as_ratio(spec: PruneSpec, ratio: float) -> PruneSpec:
    """`spec` with its latency target replaced by a channel ratio, pruned in one go (a probe is not fine-tuned)."""
    return spec.model_copy(update={"latency": None, "measured_on": None, "ratio": ratio, "iterative_steps": 1})


def _stepper(
    model, example, spec: PruneSpec, ratio: float, steps: int, gradient_batches, loss, shares=None
) -> _Stepper:
    per_layer = _layer_ratios(model, spec.layer_ratios)
    if shares is not None:  # latency allocation: each group's own ratio
        modules = dict(model.named_modules())
        per_layer = {modules[name]: r for name, r in latency_table.group_ratios(shares, ratio, MAX_RATIO).items()}
    pruner = _MetaPruner(
        model,
        example,
        importance=IMPORTANCE.get(spec.importance)(),
        pruning_ratio=ratio,
        pruning_ratio_dict=per_layer or None,
        iterative_steps=steps,
        global_pruning=spec.global_pruning,
        round_to=spec.round_to,
        ignored_layers=_ignored(model, spec.ignore),
    )
    return _Stepper(model, pruner, steps, spec, gradient_batches, loss)


class _MetaPruner(tp.pruner.MetaPruner):
    """torch-pruning's MetaPruner, except that `round_to` never rounds a group down to no channels: torch-pruning
    then leaves the group whole (`DependencyGraph.check_pruning_group`), so with round_to 8 MobileNetV2 x0.5's
    16-channel residual stages kept all 16 channels at ratio 0.6 but went to 8 at 0.5: a larger ratio gave wider
    layers. Such a group keeps `round_to` channels instead."""

    def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
        return min(super()._round_to(n_pruned, current_channels, round_to), max(current_channels - round_to, 0))
