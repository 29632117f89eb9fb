"""The recipe schema: what a user writes, validated before any work starts.

Every model forbids unknown keys, so a typo fails at load time with the key's path
(``stages.1.finetune.epoch: unknown key``) instead of being silently ignored. Names that live in
registries (models, data sets, importance criteria, targets) are checked here too, so a run never
starts, or creates its run directory, on a recipe that would fail half-way.

>>> recipe = load_recipe("recipes/quickstart.yaml", overrides=["train.epochs=2"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from targets import TARGETS
from targets.base import EdgecompError, did_you_mean

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Spec):
    arch: str = Field(description="a name in `edgecomp models`")
    num_classes: PositiveInt | None = Field(None, description="default: the data set's class count")
    width_mult: float = Field(1.0, gt=0.0, le=4.0)
    small_input: bool = Field(False, description="stride-1 stem, for 32x32-class inputs")
    weights: str | None = Field(None, description="checkpoint (state dict) to start the dense model from")


class DataSpec(Spec):
    dataset: str = Field(description="a name in `edgecomp datasets`")
    image_size: PositiveInt = 32
    batch_size: PositiveInt = 64
    root: str | None = Field(None, description="where the data set's files are (data sets that need files)")
    train_subset: PositiveInt | None = Field(None, description="use a stratified subset of the training split")


class TrainSpec(Spec):
    epochs: Annotated[int, Field(ge=0)] = 30
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(4e-5, ge=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    seed: int = 0


class PruneSpec(Spec):
    importance: str = "l2"
    ratio: Fraction = Field(0.5, description="fraction of channels removed in every prunable layer")
    iterative_steps: PositiveInt = 1
    global_pruning: bool = False
    round_to: PositiveInt | None = None
    ignore: list[str] = Field(default_factory=list, description="module names kept whole (the classifier always is)")


class DistillSpec(Spec):
    teacher: Literal["dense"] = "dense"
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the KD term; 1 - alpha weighs the label loss")
    temperature: float = Field(4.0, gt=0.0)


class FinetuneSpec(Spec):
    epochs: Annotated[int, Field(ge=0)] = 10
    lr: float | None = Field(None, gt=0.0, description="default: train.lr / 10")
    distill: DistillSpec | None = None


class StageSpec(Spec):
    """One stage: a mapping with exactly one key naming its kind."""

    prune: PruneSpec | None = None
    finetune: FinetuneSpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> StageSpec:
        kinds = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a stage names exactly one of {', '.join(type(self).model_fields)}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def spec(self) -> Spec:
        return getattr(self, self.kind)


class BaselinesSpec(Spec):
    scratch: list[Literal["E", "B"]] = Field(default_factory=lambda: ["E", "B"])
    max_epochs: PositiveInt | None = Field(None, description="cap on Scratch-B's epochs")


class ExportSpec(Spec):
    target: str
    precision: list[str] = Field(default_factory=lambda: ["fp32"], min_length=1)

    @model_validator(mode="after")
    def _supported(self) -> ExportSpec:
        if self.target not in TARGETS:
            raise ValueError(
                f"unknown target {self.target!r}{did_you_mean(self.target, TARGETS)}; known: {', '.join(TARGETS)}"
            )
        supported = TARGETS[self.target].precisions
        for precision in self.precision:
            if precision not in supported:
                raise ValueError(
                    f"{self.target} does not support precision {precision!r}; supported: {', '.join(supported)}"
                )
        return self


class BenchSpec(Spec):
    threads: list[PositiveInt] = Field(default_factory=lambda: [2], min_length=1)
    warmup: Annotated[int, Field(ge=0)] = 10
    runs: PositiveInt = 100


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

    @model_validator(mode="after")
    def _stage_order(self) -> Recipe:
        kinds = [stage.kind for stage in self.stages]
        if "finetune" in kinds and "prune" in kinds and kinds.index("finetune") < kinds.index("prune"):
            raise ValueError("stages: finetune must come after prune")
        if kinds.count("prune") > 1:
            raise ValueError("stages: at most one prune stage (use prune.iterative_steps for schedules)")
        return self

    @property
    def prune(self) -> PruneSpec | None:
        return next((stage.prune for stage in self.stages if stage.prune is not None), None)

    @property
    def finetune(self) -> FinetuneSpec | None:
        return next((stage.finetune for stage in self.stages if stage.finetune is not None), None)


def _format_errors(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        message = message.removeprefix("Value error, ")
        lines.append(f"{source}: {where}: {message}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``--set a.b.0.c=value`` to the raw recipe mapping (list indices are numbers)."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise EdgecompError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.epochs=5")
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise EdgecompError(f"--set {key}: {'.'.join(parts[:i])} has no item {part!r}")
            index: Any = int(part)
        elif isinstance(node, dict):
            index = part
        else:
            raise EdgecompError(f"--set {key}: {'.'.join(parts[:i])} is not a mapping or list")
        if last:
            node[index] = _parse_value(value)
        else:
            if isinstance(node, dict) and node.get(index) is None:
                node[index] = {}
            node = node[index]


def parse_recipe(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise EdgecompError(f"{source}: expected a mapping of recipe keys, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise EdgecompError(_format_errors(source, error)) from None
    _check_names(recipe, source)
    return recipe


def _check_names(recipe: Recipe, source: str) -> None:
    """Registry names are checked at load time too, so no run starts on a recipe that cannot finish."""
    from compress.data import DATASETS
    from compress.models import MODELS, parse_arch
    from compress.prune import IMPORTANCE
    from compress.tasks import TASKS

    checks = [
        ("model.arch", lambda: parse_arch(recipe.model.arch, MODELS)),
        ("data.dataset", lambda: DATASETS.get(recipe.data.dataset)),
        ("task", lambda: TASKS.get(recipe.task)),
    ]
    for i, stage in enumerate(recipe.stages):
        if stage.prune is not None:
            checks.append((f"stages.{i}.prune.importance", lambda s=stage.prune: IMPORTANCE.get(s.importance)))
    for where, check in checks:
        try:
            check()
        except EdgecompError as error:
            raise EdgecompError(f"{source}: {where}: {error}") from None
    if recipe.model.weights is not None and not Path(recipe.model.weights).expanduser().is_file():
        raise EdgecompError(f"{source}: model.weights: no such file {recipe.model.weights!r}")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise EdgecompError(f"{path}: no such recipe file (shipped recipes: `edgecomp recipes`)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise EdgecompError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    except UnicodeDecodeError:
        raise EdgecompError(f"{path}: not a UTF-8 text file") from None
    if isinstance(data, dict):
        for assignment in overrides or []:
            apply_override(data, assignment)
    return parse_recipe(data, source=str(path))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
