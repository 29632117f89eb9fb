"""The recipe schema: what a user writes, as typed, frozen specs validated before any work starts.

Every model forbids unknown keys, so a typo fails at load time with the key's path
(``stages.1.finetune.epoch: unknown key``) instead of being silently ignored. Each layer takes its own
part (models a ModelSpec, data sets a DataSpec, pruning a PruneSpec), so this package is a leaf: it imports
only the standard library, pydantic and the targets' capability table, never the registries it names. The
stages' specs are `compress.schema.stages`; the shared base and scalars `compress.schema.common`.
Reading a YAML file and checking registry names is `compress.recipe`.

>>> Recipe.model_validate({"name": "t", "model": {"arch": "mobilenet_v2"}, "data": {"dataset": "digits"}}).train.epochs
30
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_serializer, model_validator

from compress.schema.common import Epochs, Fraction, PositiveInt, Seed, Spec
from compress.schema.stages import (
    UNION_TAGS,
    DistillSpec,
    FeatureKD,
    FinetuneSpec,
    PruneSpec,
    QATSpec,
    StageSpec,
    expand,
    expand_prune,
)
from targets import TARGETS, activations_refusal
from targets.base import ACTIVATION_ESTIMATORS, CALIBRATED_PRECISIONS, PRECISIONS, did_you_mean

__all__ = [
    "TIMM_PREFIX",
    "TIMM_WEIGHTS",
    "TORCHVISION_WEIGHTS",
    "UNION_TAGS",
    "BaselinesSpec",
    "BenchSpec",
    "Branch",
    "DataSpec",
    "DistillSpec",
    "ExportSpec",
    "FeatureKD",
    "FinetuneSpec",
    "ModelSpec",
    "PruneSpec",
    "QATSpec",
    "Recipe",
    "ReportSpec",
    "Spec",
    "SplitSpec",
    "StageSpec",
    "TrainSpec",
    "expand",
    "expand_prune",
]


# model.weights that name a library's own pretrained weights of the arch rather than a file
TORCHVISION_WEIGHTS, TIMM_WEIGHTS = "torchvision", "timm"
TIMM_PREFIX = "timm:"  # arch: timm:NAME


class ModelSpec(Spec):
    arch: str = Field(description="a name in `edgecomp models`, timm:NAME, pkg.module:fn or path/file.py:fn")
    num_classes: PositiveInt | None = Field(None, description="default: the data set's class count")
    width_mult: float = Field(1.0, gt=0.0, le=4.0)
    small_input: bool = Field(False, description="stride-1 stem, for 32x32-class inputs")
    image_size: PositiveInt | None = Field(
        None, description="the square input size the model is built for (a detector's anchors); default data.image_size"
    )
    weights: str | None = Field(
        None, description="a state dict (.pth, .safetensors) to start the dense model from, or 'torchvision'/'timm'"
    )

    @field_validator("weights")
    @classmethod
    def _library_weights_fit_the_arch(cls, weights: str | None, info: ValidationInfo) -> str | None:
        arch = info.data.get("arch", TIMM_PREFIX)  # absent: arch's own error is reported
        if weights == TIMM_WEIGHTS and not arch.startswith(TIMM_PREFIX):
            raise ValueError(f"timm is timm's weights of an arch: timm:NAME model, not {arch!r}")
        return weights

    @property
    def library_weights(self) -> bool:
        """Whether `weights` names a library's own weights (downloaded or cached) rather than a file."""
        return self.weights in (TORCHVISION_WEIGHTS, TIMM_WEIGHTS)


class SplitSpec(Spec):
    """The shares of a pool of images held out for validation and for the test; training gets the rest."""

    val: Fraction = Field(0.1, description="share held out for validation (best epoch, int8_ac, export parity)")
    test: Fraction = Field(0.2, description="share held out for the test every row is scored on")

    @model_validator(mode="after")
    def _train_left(self) -> SplitSpec:
        if self.val + self.test >= 1.0:
            raise ValueError(f"val {self.val:g} + test {self.test:g} leave no training images: keep their sum under 1")
        return self


class DataSpec(Spec):
    dataset: str = Field(description="a name in `edgecomp datasets`")
    image_size: Annotated[int, Field(gt=0, le=4096)] = 32
    batch_size: Annotated[int, Field(gt=0, le=65_536)] = Field(
        64, description="the global batch: with N workers each trains on batch_size / N samples per step"
    )
    root: str | None = Field(None, description="where the data set's files are (data sets that need files)")
    split: SplitSpec | None = Field(
        None,
        description="sets edgecomp splits itself (digits, images, imagefolder without split folders): "
        "the val and test shares, default 0.1 and 0.2; a PTQ-only run, which trains nothing, can score most of the "
        "photos: {val: 0.1, test: 0.7}",
    )
    train_subset: Annotated[int, Field(gt=0)] | None = Field(
        None, description="use a stratified subset of the training split"
    )
    normalize: Literal["dataset", "imagenet", "tf", "none"] = Field(
        "dataset",
        description="input convention the model was trained with: the data set's own statistics, ImageNet's "
        "mean/std, tf = [-1, 1] (TF-slim, Keras MobileNets), none = [0, 1]",
    )
    crop_pct: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="imagefolder: resize the shorter side to image_size / crop_pct and centre-crop image_size "
        "(torchvision's and timm's evaluation transform, 0.875 for ImageNet models); unset: squash to a square",
    )
    labels: str = Field(
        "contiguous",
        description="classes to output indices: contiguous = sorted class folders or COCO ids to 0..C-1; coco91 (coco) "
        "= id k to torchvision's COCO output slot k; imagenet (imagefolder) = folders named by ImageNet-1k WordNet id "
        "or class name to its output; or a text file of the model's class names in output order (imagefolder)",
    )
    augment: Literal["auto", "none", "photo", "pad_crop"] = Field(
        "auto",
        description="training batches only, in every training stage: photo = random-resized crop + flip, pad_crop "
        "= pad image_size/8 + random crop + flip; auto = the data set's default (photo for imagefolder, pad_crop "
        "for cifar10 and fashion_mnist, none for digits and detection sets)",
    )

    @model_validator(mode="after")
    def _labels_fit_the_data(self) -> DataSpec:
        fits = {"contiguous": self.dataset, "coco91": "coco"}.get(self.labels, "imagefolder")
        if self.dataset != fits:
            what = {"coco91": "COCO category ids"}.get(self.labels, "class folders")
            raise ValueError(f"labels: {self.labels} maps {what}, so it goes with dataset: {fits}, not {self.dataset}")
        return self


class TrainSpec(Spec):
    epochs: Epochs = 30
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0, le=100.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(4e-5, ge=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    seed: Seed = Field(0, description="drives weights init, data order, augmentation and the calibration sample choice")
    seeds: list[Seed] | None = Field(
        None,
        description="several seeds: every trained candidate is trained (and measured) once per seed and the report "
        "shows the mean ± sd over them; seed: N is the one-seed shorthand, give one of the two",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where training runs: auto = CUDA if present")
    amp: Literal["none", "bf16", "fp16"] = Field("none", description="mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = Field(
        False, description="NHWC activations in training (faster convs on recent GPUs, and depthwise convs on CPU)"
    )
    freeze_bn: bool = Field(
        False,
        description="keep batch norm in eval mode with frozen weights in every training stage: for models whose BN "
        "is folded (deployment checkpoints, TF imports), which train-mode BN makes collapse",
    )

    @model_validator(mode="before")
    @classmethod
    def _seed_or_seeds(cls, data: Any) -> Any:
        """`seed` is the one-seed shorthand of `seeds`: both given is refused (null counts as not given, so that
        `--set train.seed=null` drops a recipe's seed); with `seeds`, `seed` is the first of them."""
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if key != "seed" or value is not None}
        seeds = data.get("seeds")
        if seeds is None:
            return data
        if "seed" in data:
            raise ValueError(
                "seed and seeds are both given: seed: N is one run, seeds: [0, 1, 2] trains every candidate once per "
                "seed; keep one (on the command line, --set train.seed=null drops the recipe's seed)"
            )
        first = seeds[0] if isinstance(seeds, list) and seeds else None
        valid = isinstance(first, int) and not isinstance(first, bool) and 0 <= first <= 2**32 - 1
        return {**data, "seed": first} if valid else data  # else seeds' own error alone

    @model_validator(mode="after")
    def _seeds_listed_once(self) -> TrainSpec:
        if self.seeds is None:
            return self
        if not self.seeds:
            raise ValueError("seeds is empty: give one or more, e.g. seeds: [0, 1, 2] (or seed: 0 for one run)")
        repeated = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if repeated:
            raise ValueError(
                f"seeds: {', '.join(map(str, repeated))} listed more than once; a seed trains the same models every "
                "time, so list each seed once"
            )
        return self

    @model_serializer(mode="wrap")
    def _one_seed_key(self, handler: Any) -> dict[str, Any]:
        """Written with `seed` or `seeds`, never both, so a resolved recipe loads again, and a one-seed spec dumps
        exactly as before `seeds` existed: the trained stages' cache keys hold this dump."""
        data = handler(self)
        data.pop("seed" if self.seeds is not None else "seeds", None)
        return data

    @property
    def seed_list(self) -> list[int]:
        """The seeds every trained candidate is trained with: `seeds`, or the one `seed`."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    @property
    def several_seeds(self) -> bool:
        """Rows carry their seed and the report aggregates over seeds only then."""
        return len(self.seed_list) > 1

    def with_seed(self, seed: int) -> TrainSpec:
        """The one-seed spec of `seed`: what that seed's models are trained (and keyed) with."""
        return self.model_copy(update={"seed": seed, "seeds": None})

    def seed_tag(self, seed: int) -> str:
        """What names `seed`'s stages and export folders beside the first seed's: '' for the first seed (its
        stages keep the one-seed names, so adding seeds to a finished run trains only the new ones), else 'seed1'."""
        return "" if seed == self.seed_list[0] else f"seed{seed}"


class BaselinesSpec(Spec):
    scratch: list[Literal["E", "B"]] = Field(default_factory=lambda: ["E", "B"])
    max_epochs: PositiveInt | None = Field(None, description="cap on Scratch-B's epochs")


DEFAULT_MAX_ACCURACY_DROP = 1.0  # points; NNCF's own default (max_drop 0.01, absolute)


class ExportSpec(Spec):
    """One target and its precisions, checked against the target's capability table (`targets.TARGETS`)."""

    target: str
    precision: list[str] = Field(default_factory=lambda: ["fp32"], min_length=1)
    io: str = Field("float", description="input/output tensor type: float, or int8 (int8 precision, tflite)")
    calibration_samples: Annotated[int, Field(gt=0, le=100_000)] = Field(
        256, description="train images the int8 precisions calibrate on (and QAT starts its ranges from)"
    )
    calibration_root: str | None = Field(
        None,
        description="int8 precisions: calibrate on photos of this folder (no labels needed) instead of train images",
    )
    max_accuracy_drop: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="int8_ac only: points of the task's metric on the val split that int8 may lose (default 1)",
    )
    keep_float: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="int8 precisions: module-name globs whose layers stay in float (e.g. 'features.11', 'classifier*')",
    )
    activations: str | None = Field(
        None,
        description="int8 precisions: how each activation's int8 range is estimated from the calibration samples, "
        "through the target's own quantizer. "
        + "; ".join(f"{name}: {meaning}" for name, meaning in ACTIVATION_ESTIMATORS.items())
        + ". Per target: "
        + "; ".join(
            f"{name} {', '.join(spec.activations)} (default: {spec.default_activations or 'its library mixes them'})"
            for name, spec in TARGETS.items()
            if spec.activations
        )
        + ". QAT rows train their ranges and ignore it",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_drop(cls, data: Any) -> Any:
        """int8_ac's drop is written into the resolved recipe, so the run says what it allowed."""
        if isinstance(data, dict) and data.get("max_accuracy_drop") is None:
            precision = data.get("precision")
            if any(_accuracy_controlled(p) for p in (precision if isinstance(precision, list) else [precision])):
                data = {**data, "max_accuracy_drop": DEFAULT_MAX_ACCURACY_DROP}
        return data

    @model_validator(mode="after")
    def _supported(self) -> ExportSpec:
        if self.target not in TARGETS:
            raise ValueError(
                f"unknown target {self.target!r}{did_you_mean(self.target, TARGETS)}; known: {', '.join(TARGETS)}"
            )
        spec = TARGETS[self.target]
        for precision in self.precision:
            if precision not in spec.precisions:
                hint = did_you_mean(precision, spec.precisions)
                raise ValueError(
                    f"{self.target} does not support precision {precision!r}{hint}; "
                    f"supported: {', '.join(spec.precisions)}"
                )
        if self.io not in spec.io:
            raise ValueError(f"{self.target} does not support io {self.io!r}; supported: {', '.join(spec.io)}")
        if self.io != "float" and self.precision != ["int8"]:
            raise ValueError(f"io {self.io!r} goes with precision [int8] only (float precisions have float I/O)")
        if self.keep_float and not set(self.precision) & set(CALIBRATED_PRECISIONS):
            raise ValueError("keep_float goes with an int8 precision (int8 or int8_ac) only")
        if self.activations is not None and not set(self.precision) & set(CALIBRATED_PRECISIONS):
            raise ValueError("activations goes with an int8 precision (int8 or int8_ac) only")
        if self.activations is not None and (refusal := activations_refusal(self.target, self.activations)):
            raise ValueError(f"activations: {refusal}")
        if self.max_accuracy_drop is not None and not any(map(_accuracy_controlled, self.precision)):
            raise ValueError("max_accuracy_drop goes with precision int8_ac (int8 with accuracy control) only")
        return self


def _accuracy_controlled(precision: Any) -> bool:
    return isinstance(precision, str) and precision in PRECISIONS and PRECISIONS[precision].accuracy_controlled


class BenchSpec(Spec):
    """How exported files are timed: here, or with `remote` on another machine over SSH (`targets.remote`; the
    accuracy, the parity and the PyTorch eager rows stay on this machine)."""

    threads: list[Annotated[int, Field(gt=0, le=1024)]] = Field(default_factory=lambda: [2], min_length=1)
    warmup: Annotated[int, Field(ge=0, le=1_000_000)] = 10
    runs: PositiveInt = 100
    rounds: Annotated[int, Field(ge=1, le=10_000)] = Field(
        100,
        description="every row's runs are split over this many rounds (at most runs), each a burst of every row in "
        "turn after `warmup` untimed inferences, so that a CPU whose speed drifts slows every row alike "
        "(`compress.timing`); fewer rounds cost fewer untimed inferences",
    )
    remote: str | None = Field(None, description="user@host (a Host of ~/.ssh/config, ssh://user@host:port)")
    remote_python: str = Field("python3", min_length=1, description="the Python on the remote host")
    remote_ssh_options: list[str] = Field(default_factory=list, description="ssh -o KEY=VALUE options, e.g. Port=2222")
    remote_timeout: float = Field(600.0, gt=0.0, description="seconds one remote benchmark may take")

    @field_validator("remote")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (not value or value.startswith("-") or any(c.isspace() for c in value)):
            raise ValueError("expected user@host, a Host of ~/.ssh/config or ssh://user@host:port")
        return value

    @field_validator("remote_ssh_options")
    @classmethod
    def _ssh_options(cls, value: list[str]) -> list[str]:
        wrong = [option for option in value if not re.match(r"^[A-Za-z][A-Za-z0-9]*=.+$", option)]
        if wrong:
            raise ValueError(f"{wrong[0]!r}: expected KEY=VALUE as ssh -o takes it, e.g. Port=2222")
        return value


class ReportSpec(Spec):
    """What the report recommends: per target, the best measured row within these limits (none set: no pick)."""

    latency_budget_ms: float | None = Field(None, gt=0.0, description="the most accurate row with p50 within this")
    max_accuracy_drop: float | None = Field(
        None, ge=0.0, description="points below the dense fp32 PyTorch model; alone: the fastest row within it"
    )


class Recipe(Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    task: str = "classification"
    model: ModelSpec
    data: DataSpec
    train: TrainSpec = TrainSpec()
    stages: list[StageSpec] = Field(default_factory=list)
    baselines: BaselinesSpec = BaselinesSpec()
    exports: list[ExportSpec] = Field(default_factory=list)
    bench: BenchSpec = BenchSpec()
    report: ReportSpec = ReportSpec()

    @model_validator(mode="before")
    @classmethod
    def _model_input_size(cls, data: Any) -> Any:
        """The model is built for the data's image size unless the recipe says otherwise."""
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and isinstance(data.get("data"), dict):
            size = data["data"].get("image_size", DataSpec.model_fields["image_size"].default)
            valid = isinstance(size, int) and not isinstance(size, bool) and size > 0  # else data's error alone
            if data["model"].get("image_size") is None and valid:
                data = {**data, "model": {**data["model"], "image_size": size}}
        return data

    @model_validator(mode="after")
    def _stage_order(self) -> Recipe:
        kinds = [stage.kind for stage in self.stages]
        if "finetune" in kinds and "prune" in kinds and kinds.index("finetune") < kinds.index("prune"):
            raise ValueError("stages: finetune must come after prune")
        if kinds.count("prune") > 1:
            raise ValueError("stages: at most one prune stage (use prune.iterative_steps for schedules)")
        if "qat" in kinds and (kinds.count("qat") > 1 or kinds[-1] != "qat"):
            raise ValueError("stages: one qat stage at most, and it comes last (it quantizes what the others made)")
        return self

    @property
    def prune(self) -> PruneSpec | list[PruneSpec] | None:
        """The prune stage's spec, or its list of alternatives; `branches` expands either."""
        return next((stage.prune for stage in self.stages if stage.prune is not None), None)

    @property
    def finetune(self) -> FinetuneSpec | None:
        return next((stage.finetune for stage in self.stages if stage.finetune is not None), None)

    @property
    def qat(self) -> QATSpec | None:
        return next((stage.qat for stage in self.stages if stage.qat is not None), None)

    def qat_targets(self) -> list[str]:
        """The targets that get an int8-qat row: the qat stage's list, else every int8 export with a QAT path."""
        if self.qat is None:
            return []
        if self.qat.targets is not None:
            return list(self.qat.targets)
        return [e.target for e in self.exports if "int8" in e.precision and TARGETS[e.target].qat]

    def branches(self) -> list[Branch]:
        """The pruned candidates this recipe asks for: one per combination of swept values (of each alternative)."""
        if self.prune is None:
            return []
        return [
            Branch(prune_tag, prune, "-".join(tag for tag in (prune_tag, finetune_tag) if tag), finetune)
            for prune_tag, prune in expand_prune(self.prune)
            for finetune_tag, finetune in expand(self.finetune)
        ]


@dataclass(frozen=True)
class Branch:
    """One pruned candidate's path: a scalar prune spec (shared by the scratch baselines) and fine-tune spec."""

    prune_tag: str  # names the pruned architecture: '' without a sweep or alternatives, e.g. 'l2-macs0.5'
    prune: PruneSpec
    tag: str  # names the candidate: prune_tag plus any swept fine-tune values
    finetune: FinetuneSpec | None
