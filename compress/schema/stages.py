"""The stages of a recipe: pruning (one target, or alternatives), fine-tuning with distillation, QAT, and the
sweeps that expand one stage into several candidates (`expand`, `expand_prune`)."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from compress.schema.common import Epochs, Fraction, PositiveInt, Spec
from targets import TARGETS
from targets.base import did_you_mean

TARGET_KINDS = ("ratio", "macs", "params", "latency")


class PruneSpec(Spec):
    """Structured pruning. The target is one of `ratio` (channel sparsity per prunable layer), `macs` or
    `params` (the fraction of the dense model's to keep), or `latency` (the fraction of the dense model's p50
    on target `measured_on`, timed on its exported fp32 file; a key named `on` would be a YAML boolean); with
    none given, ratio 0.5. A list value sweeps it."""

    importance: str | list[str] = "l2"
    ratio: Fraction | list[Fraction] | None = Field(None, description="fraction of channels removed per layer")
    macs: Fraction | list[Fraction] | None = Field(None, description="fraction of the dense MACs to keep")
    params: Fraction | list[Fraction] | None = Field(None, description="fraction of the dense parameters to keep")
    latency: Fraction | list[Fraction] | None = Field(
        None,
        description="fraction of the dense model's p50 latency on target `measured_on` (its fp32 file, first threads)",
    )
    measured_on: str | list[str] | None = Field(
        None, description="latency targets: the target whose runtime measures it (tflite, ...); a list sweeps it"
    )
    allocation: Literal["uniform", "latency"] = Field(
        "uniform",
        description="latency targets: every layer group loses the same ratio, or by a latency table timed "
        "on `measured_on`: groups that cost more of the p50 lose more (`compress.latency_table`)",
    )
    layer_ratios: dict[str, Fraction] = Field(
        default_factory=dict, description="per-layer ratio by module-name glob, e.g. {'features.1*': 0.2} (ratio only)"
    )
    iterative_steps: PositiveInt = 1
    finetune_epochs_per_step: Epochs = 0
    global_pruning: bool = False
    round_to: PositiveInt | None = Field(None, description="keep channel counts a multiple of this (runtimes like 8)")
    ignore: list[str] = Field(
        default_factory=list, description="module names kept whole (output layers always are: classifier, predictors)"
    )

    @model_validator(mode="after")
    def _one_target(self) -> PruneSpec:
        given = [name for name in TARGET_KINDS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one pruning target, not {' and '.join(given)}")
        if (self.latency is None) != (self.measured_on is None):
            raise ValueError("a latency target names the target that measures it: latency: 0.5, measured_on: tflite")
        for target in [self.measured_on] if isinstance(self.measured_on, str) else self.measured_on or []:
            if target not in TARGETS:
                raise ValueError(f"prune.measured_on: unknown target {target!r}{did_you_mean(target, TARGETS)}")
        if self.allocation == "latency" and (self.latency is None or self.global_pruning):
            raise ValueError("allocation: latency goes with a latency target, without global_pruning")
        if self.layer_ratios and given and given[0] != "ratio":
            raise ValueError("layer_ratios go with a ratio target, not a macs or params one")
        return self

    @property
    def target(self) -> tuple[str, float]:
        """(kind, value) of the pruning target: ('ratio', 0.5), ('macs', 0.4) or ('params', 0.3)."""
        for name in TARGET_KINDS:
            if getattr(self, name) is not None:
                return name, getattr(self, name)
        return "ratio", 0.5


class FeatureKD(Spec):
    student: str = Field(description="module name in the student whose output is matched")
    teacher: str | None = Field(None, description="module name in the teacher (default: the student's name)")
    weight: float = Field(1.0, gt=0.0)


class DistillSpec(Spec):
    teacher: str = Field("dense", description="'dense' (this run's dense model) or the path of an edgecomp checkpoint")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the KD term; 1 - alpha weighs the label loss")
    temperature: float = Field(4.0, gt=0.0)
    features: list[FeatureKD] = Field(default_factory=list, description="feature KD on intermediate layers")


class FinetuneSpec(Spec):
    epochs: Epochs | list[Epochs] = 10
    lr: Annotated[float, Field(gt=0.0, le=100.0)] | list[Annotated[float, Field(gt=0.0, le=100.0)]] | None = Field(
        None, description="default: train.lr / 10"
    )
    distill: DistillSpec | None = None


class QATSpec(Spec):
    """Quantization-aware training: each candidate the earlier stages made (the pruned ones, or the dense
    model in a recipe without pruning) is fine-tuned once per int8 export target with that target's own
    fake quantization, and exported as an extra ``int8-qat`` row beside the PTQ ``int8`` one."""

    epochs: PositiveInt = 2
    lr: float | None = Field(None, gt=0.0, le=100.0, description="default: train.lr / 100")
    distill: DistillSpec | None = Field(None, description="logits KD during QAT (no features: graphs lose names)")
    targets: list[str] | None = Field(
        None, min_length=1, description="default: every exported target with int8 that has a QAT path"
    )

    @model_validator(mode="after")
    def _logits_only(self) -> QATSpec:
        if self.distill is not None and self.distill.features:
            raise ValueError(
                "distill.features: feature KD is not available in QAT (a quantized graph keeps no module names); "
                "drop features to distill the logits"
            )
        return self


SWEEPABLE = {
    PruneSpec: ("importance", "ratio", "macs", "params", "latency", "measured_on"),
    FinetuneSpec: ("epochs", "lr"),
}


def _tag(name: str, value: Any) -> str:
    """A swept value in a candidate's name: 'l2', 'macs0.5', 'measured_on-tflite'."""
    if name == "importance":
        return str(value)
    return f"{name}-{value}" if isinstance(value, str) else f"{name}{value:g}"


def expand(spec: Spec | None) -> list[tuple[str, Spec | None]]:
    """One (tag, scalar spec) per combination of the spec's list-valued (swept) fields.

    >>> [tag for tag, _ in expand(PruneSpec(importance=["l2", "random"], macs=[0.5, 0.3]))]
    ['l2-macs0.5', 'l2-macs0.3', 'random-macs0.5', 'random-macs0.3']
    """
    if spec is None:
        return [("", None)]
    swept = [name for name in SWEEPABLE[type(spec)] if isinstance(getattr(spec, name), list)]
    combos = itertools.product(*(getattr(spec, name) for name in swept))
    return [
        (
            "-".join(_tag(name, v) for name, v in zip(swept, values, strict=True)),
            spec.model_copy(update=dict(zip(swept, values, strict=True))),
        )
        for values in combos
    ]


def _alternative_tag(alternative: PruneSpec, spec: PruneSpec) -> str:
    """The tag of one candidate of a prune alternative (`spec`, one combination of `alternative`'s swept values):
    its criterion when that is swept, then its target kind and value, the target that measures a latency and
    whether a latency table shares the channels out: 'macs0.5', 'latency0.5-on-tflite', 'latency0.5-on-tflite-
    per-layer', 'taylor-ratio0.3'. Named so even with nothing swept, so that it says which alternative made it."""
    kind, value = spec.target
    swept = [spec.importance] if isinstance(alternative.importance, list) else []
    on = [f"on-{spec.measured_on}"] * (kind == "latency") + ["per-layer"] * (spec.allocation == "latency")
    return "-".join([*swept, f"{kind}{value:g}", *on])


def expand_prune(prune: PruneSpec | list[PruneSpec]) -> list[tuple[str, PruneSpec]]:
    """One (tag, scalar spec) per pruned architecture a prune stage asks for: a mapping's as `expand` names them
    (so a recipe without alternatives keeps its stage names and keys); a list's, every alternative expanded,
    each candidate named by its target (`_alternative_tag`).

    >>> [tag for tag, _ in expand_prune([PruneSpec(latency=0.5, measured_on=["tflite", "onnx"]), PruneSpec(macs=0.5)])]
    ['latency0.5-on-tflite', 'latency0.5-on-onnx', 'macs0.5']
    """
    if isinstance(prune, PruneSpec):
        return expand(prune)
    return [(_alternative_tag(alternative, spec), spec) for alternative in prune for _, spec in expand(alternative)]


UNION_TAGS = ("one", "alternatives")  # the tags of the tagged union below, in an error's location


def _one_or_alternatives(value: Any) -> str:
    return UNION_TAGS[isinstance(value, list)]


# `prune: {...}` or `prune: [{...}, {...}]`. Tagged, so that an error is reported for the form the user wrote
# (an untagged union reports it once per form); the tag is dropped from the error's path (`compress.recipe`).
PruneStage = Annotated[
    Annotated[PruneSpec, Tag(UNION_TAGS[0])] | Annotated[list[PruneSpec], Tag(UNION_TAGS[1]), Field(min_length=1)],
    Discriminator(_one_or_alternatives),
]


class StageSpec(Spec):
    """One stage: a mapping with exactly one key naming its kind. `prune` may be a list of alternatives, each
    expanded as a mapping is (e.g. a latency target next to a MACs one, to compare them in one run)."""

    prune: PruneStage | None = None
    finetune: FinetuneSpec | None = None
    qat: QATSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StageSpec:
        kinds = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a stage names exactly one of {', '.join(type(self).model_fields)}")
        tags = [tag for tag, _ in expand_prune(self.prune)] if isinstance(self.prune, list) else []
        repeated = list(dict.fromkeys(tag for tag in tags if tags.count(tag) > 1))
        if repeated:
            raise ValueError(
                f"prune: more than one candidate would be named {repeated[0]!r} (a candidate of alternatives is named "
                "by its target): give each alternative its own target, or sweep what differs in one of them, e.g. "
                "importance: [l2, taylor]"
            )
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def spec(self) -> Spec:
        return getattr(self, self.kind)
