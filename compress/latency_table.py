"""Latency-aware channel allocation: what one channel of each layer group costs on the target, measured.

A uniform ratio takes the same share of channels from every layer group, whatever a channel of that group
costs in the runtime: a channel of an early 112x112 expansion moves far more memory than one of a late 7x7 one,
and runtimes run some channel counts faster than others. NetAdapt (Yang et al., ECCV 2018) chooses per layer
from latencies measured on the device; here each prunable group (torch-pruning's dependency groups: a layer
and everything coupled to its output channels) is pruned alone in a copy of the network, each copy's file is
exported for the target and all of them are timed interleaved with the dense model's file in one timing
(`compress.candidates.timed_against`), so each group's saving is a fraction of the dense p50 read in the same
rounds. A group's cost per channel is that saving over the channels removed.

How the channels are then shared out (`group_ratios`): each group g keeps a fraction k_g of its channels, chosen
to lose the least capacity, sum over groups of -log k_g (halving any group costs the same; the assumption behind
a uniform ratio, which this is when every group costs the same), for the latency saved, sum of a_g (1 - k_g)
with a_g the share of the dense p50 the whole group accounts for (its probe's saving over the share of its
channels removed). The optimum is k_g = t / a_g, capped to [1 - MAX_RATIO, 1]: a group that accounts for twice
the latency keeps half the share of its channels; one level t (`group_ratios`: from the largest a_g at search
ratio 0, nothing pruned, down to every group at the cap at MAX_RATIO) sets them all, and within a group the
criterion picks which channels go. Latency is
not additive over groups (a 1x1 conv between two pruned groups loses both ways): the table orders the groups,
the search's whole-network timings decide how far. (Ranking all channels globally by importance per latency
instead, torch-pruning's global pruning over weighted scores, is linear in every group and so all-or-nothing:
on MobileNetV2 it cut whole residual stages to 8 channels before any expansion layer lost one.)
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

PROBE_SHARE = 0.75  # of a group's channels each table probe removes: a large saving reads above timing noise
FLOOR = 0.001  # the least saving per group probe credited (fraction of the dense p50): noise can read <= 0
REPEATS = 3  # timings of the table's probes, each probe's median kept: one group's saving is a few % of the p50


@dataclass(frozen=True)
class GroupCost:
    """One layer group's entry: the root layer's name, its channels, and what removing some of them saved."""

    name: str
    channels: int
    removed: int
    saved: float  # 1 - probe p50 / dense p50, in one interleaved timing

    @property
    def measured_share(self) -> float:
        """The share of the dense p50 the whole group accounts for, as its probe read it: the saving over the share
        of channels removed (below zero where timing noise outweighed the saving)."""
        return self.saved * self.channels / self.removed

    @property
    def share(self) -> float:
        """`measured_share`, floored: a group is never free."""
        return max(self.saved, FLOOR) * self.channels / self.removed


@dataclass(frozen=True)
class LatencyTable:
    """Every prunable group's probe on one target: what cutting it to a quarter of its channels saved."""

    target: str
    groups: list[GroupCost]

    def shares(self) -> dict[str, float]:
        """Per group, the share of the dense p50 it accounts for (`GroupCost.share`)."""
        return {group.name: group.share for group in self.groups}

    def as_dict(self) -> dict:
        """For the stage's metrics: per group [channels, channels removed by its probe, saving]."""
        return {
            "target": self.target,
            "groups": {g.name: [g.channels, g.removed, round(g.saved, 4)] for g in self.groups},
        }


def prunable_groups(
    model: nn.Module, example: torch.Tensor, ignored: list[nn.Module]
) -> tuple[tp.DependencyGraph, list]:
    """torch-pruning's dependency graph of `model` and the root layer of each of its prunable groups."""
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv2d, nn.Linear))
    return graph, [group[0].dep.target.module for group in groups]


def _kept(channels: int, round_to: int | None) -> int:
    """Channels a table probe keeps: a quarter, a multiple of `round_to` (at least one such multiple)."""
    step = round_to or 1
    return min(channels, max(step, int(channels * (1 - PROBE_SHARE)) // step * step))


def _without(model: nn.Module, example: torch.Tensor, name: str, keep: int) -> nn.Module:
    """A copy of `model` with layer `name`'s group cut to its first `keep` output channels."""
    copy = deepcopy(model)
    layer = dict(copy.named_modules())[name]
    graph = tp.DependencyGraph().build_dependency(copy, example_inputs=example)
    channels = graph.get_out_channels(layer)
    handler = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
    graph.get_pruning_group(layer, handler, idxs=list(range(keep, channels))).prune()
    return copy


def measure(
    model: nn.Module,
    example: torch.Tensor,
    ignored: Callable[[nn.Module], list[nn.Module]],
    round_to: int | None,
    target: str,
    time_all: Callable[[list[nn.Module], int], list],
) -> LatencyTable:
    """The latency table of `model` on `target`: one probe per prunable group (`ignored(model)` are not), all
    timed by `time_all(models, REPEATS)` (a `compress.prune.ProbeTiming` per model, against the dense model)."""
    names = {module: name for name, module in model.named_modules()}
    graph, roots = prunable_groups(model, example, ignored(model))
    entries, probes = [], []
    for root in roots:
        channels = graph.get_out_channels(root)
        keep = _kept(channels, round_to)
        if keep < channels:
            entries.append((names[root], channels, channels - keep))
            probes.append(_without(model, example, names[root], keep))
    timings = time_all(probes, REPEATS)
    groups = [GroupCost(n, c, r, 1 - t.fraction) for (n, c, r), t in zip(entries, timings, strict=True)]
    return LatencyTable(target, groups)


def group_ratios(shares: dict[str, float], ratio: float, max_ratio: float) -> dict[str, float]:
    """Each group's pruning ratio at search level `ratio` (0: none pruned; `max_ratio`: every group at
    `max_ratio`), from `LatencyTable.shares`: 1 - k_g with k_g = t / a_g within [1 - max_ratio, 1], the level t
    falling geometrically with `ratio` from the largest a_g (nothing pruned) to (1 - max_ratio) times the smallest
    (every group at the cap), so that a table whose shares span orders of magnitude is searched evenly."""
    if not shares:
        return {}
    top, bottom = max(shares.values()), (1 - max_ratio) * min(shares.values())
    level = top * (bottom / top) ** (min(ratio, max_ratio) / max_ratio)
    return {name: 1 - min(1.0, max(1 - max_ratio, level / share)) for name, share in shares.items()}
