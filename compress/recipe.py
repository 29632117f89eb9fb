"""Reading a recipe: YAML, ``--set`` overrides, the schema (`compress.schema`), then registry names.

Names that live in registries (models, data sets, tasks, importance criteria) are checked here, so a run
never starts, or creates its run directory, on a recipe that would fail half-way; the registries (and torch) are
imported only once the schema took the recipe. A recipe is a file, or the name of one shipped in the package
(`compress.shipped`, `edgecomp recipes`).

>>> recipe = load_recipe("quickstart", overrides=["train.epochs=2"])  # or a file: "my-recipe.yaml"
"""

from __future__ import annotations

import re
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from compress.schema import UNION_TAGS, Recipe
from compress.shipped import shipped_recipes
from targets import TARGETS
from targets.base import EdgecompError, did_you_mean


def _path(loc: tuple, data: Any, missing_ok: bool) -> str:
    """The error's location as keys and indices that exist in the user's data (pydantic adds the
    names of union branches, e.g. 'list[constrained-float]', which mean nothing to a user; a tagged union's
    tag, as 'alternatives' in stages.0.prune.alternatives.1.macs, is skipped: the path goes on after it)."""
    parts, node = [], data
    for part in loc:
        if part in UNION_TAGS and not (isinstance(node, dict) and part in node):
            continue
        if isinstance(node, dict):
            if part not in node:
                parts += [part] if missing_ok else []  # a missing required key is named; a union label is not
                break
            parts.append(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            parts.append(part)
            node = node[part]
        else:
            break
    shown = [str(p) if re.fullmatch(r"[\w-]+", str(p)) else repr(str(p)) for p in parts]
    return ".".join(shown) or "(top level)"


def _format_errors(source: str, error: ValidationError, data: Any) -> str:
    """One line per offending key (the first problem found there)."""
    lines: dict[str, str] = {}
    for item in error.errors():
        where = _path(item["loc"], data, missing_ok=item["type"] == "missing")
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        lines.setdefault(where, f"{source}: {where}: {' '.join(message.split())}")
    return "\n".join(lines.values())


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
                where = ".".join(parts[:i])
                hint = "" if part.isdigit() else f" (a list: name an item by its index, e.g. {where}.0.{part})"
                raise EdgecompError(f"--set {key}: {where} has no item {part!r}{hint}")
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
        raise EdgecompError(_format_errors(source, error, data)) from None
    _check_names(recipe, source)
    return recipe


def _check_names(recipe: Recipe, source: str) -> None:
    """Registry names are checked at load time too, so no run starts on a recipe that cannot finish. The
    registries import torch, so only a recipe the schema took gets here: a typo is answered in a second."""
    from compress.data import DATASETS, POOLED, split_refusal
    from compress.models import MODELS, parse_arch
    from compress.prune import IMPORTANCE
    from compress.tasks import TASKS

    checks = [
        ("model.arch", lambda: parse_arch(recipe.model.arch, MODELS)),
        ("data.dataset", lambda: DATASETS.get(recipe.data.dataset)),
        ("task", lambda: TASKS.get(recipe.task)),
    ]
    for i, stage in enumerate(recipe.stages):
        alternatives = stage.prune if isinstance(stage.prune, list) else [stage.prune] if stage.prune else []
        for j, spec in enumerate(alternatives):
            where = f"stages.{i}.prune" + (f".{j}" if isinstance(stage.prune, list) else "") + ".importance"
            names = spec.importance if isinstance(spec.importance, list) else [spec.importance]
            checks += [(where, lambda n=name: IMPORTANCE.get(n)) for name in names]
    for where, check in checks:
        try:
            check()
        except EdgecompError as error:
            raise EdgecompError(f"{source}: {where}: {error}") from None
    if recipe.data.split is not None and recipe.data.dataset not in POOLED:
        raise EdgecompError(f"{source}: {split_refusal(recipe.data, 'comes with its own splits')}")
    weights = recipe.model.weights
    if weights is not None and not recipe.model.library_weights and not Path(weights).expanduser().is_file():
        raise EdgecompError(f"{source}: model.weights: no such file {recipe.model.weights!r}")
    for i, stage in enumerate(recipe.stages):
        distill = stage.spec.distill if stage.finetune or stage.qat else None
        teacher = distill.teacher if distill else "dense"
        if teacher != "dense" and not Path(teacher).expanduser().is_file():
            raise EdgecompError(f"{source}: stages.{i}.{stage.kind}.distill.teacher: no such checkpoint {teacher!r}")
        if stage.qat is not None:
            _check_qat_targets(recipe, f"{source}: stages.{i}.qat")


def _check_qat_targets(recipe: Recipe, where: str) -> None:
    """QAT needs an int8 export on a target whose module can prepare a trainable quantized model."""
    capable = [name for name, spec in TARGETS.items() if spec.qat and "int8" in spec.precisions]
    exported = {e.target for e in recipe.exports if "int8" in e.precision}
    for name in recipe.qat.targets or []:
        if name not in TARGETS:
            raise EdgecompError(f"{where}.targets: unknown target {name!r}{did_you_mean(name, TARGETS)}")
        if name not in capable:
            raise EdgecompError(
                f"{where}.targets: {name} has no quantization-aware training; targets that have: {', '.join(capable)}"
            )
        if name not in exported:
            raise EdgecompError(
                f"{where}.targets: {name} is not exported at int8; add int8 to its precision list under exports"
            )
    if not recipe.qat_targets():
        raise EdgecompError(
            f"{where}: no int8 export to train for; add int8 to an export of {' or '.join(capable)}, "
            "e.g. {target: tflite, precision: [fp32, int8]}"
        )


def _yaml_problem(error: yaml.YAMLError) -> str:
    """' at line L, column C: problem' on one line, for parser, scanner and reader errors alike."""
    mark = getattr(error, "problem_mark", None)
    if isinstance(error, yaml.reader.ReaderError):
        return f" at character {error.position}: {error.reason}"
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{where}: {' '.join(str(getattr(error, 'problem', None) or error).split())}"


def find_recipe(recipe: str | Path) -> Path | Traversable:
    """The recipe's file: the path given when it is a file, else the shipped recipe of that name."""
    path = Path(recipe)
    return path if path.is_file() else shipped_recipes().get(str(recipe), path)


def load_recipe(recipe: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe (a file's path, or a shipped recipe's name), apply ``--set`` overrides, validate it.

    >>> load_recipe("quickstart", overrides=["train.epochs=2"]).train.epochs
    2
    """
    path = find_recipe(recipe)
    if not path.is_file():
        hint = did_you_mean(str(recipe), shipped_recipes())
        raise EdgecompError(f"{recipe}: no such recipe file or shipped recipe{hint} (shipped: `edgecomp recipes`)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise EdgecompError(f"{path}: not valid YAML{_yaml_problem(error)}") from None
    except UnicodeDecodeError:
        raise EdgecompError(f"{path}: not a UTF-8 text file") from None
    except RecursionError:
        raise EdgecompError(f"{path}: nested too deeply to be a recipe") from None
    if isinstance(data, dict):
        for assignment in overrides or []:
            apply_override(data, assignment)
    try:
        return parse_recipe(data, source=str(path))
    except RecursionError:
        raise EdgecompError(f"{path}: nested too deeply to be a recipe") from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
