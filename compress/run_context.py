"""What every part of a run shares, made once from the recipe: the data splits and their labels, the task,
the run directory, the console. Frozen: no part of a run works only because another ran first."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from compress import distributed
from compress.data import DATASETS, DataSplits, as_numpy
from compress.data.folders import IMAGE_SUFFIXES
from compress.recipe import dump_recipe
from compress.schema import Recipe
from compress.tasks import TASKS, Task
from compress.train import predict
from targets.base import AccuracyControl, EdgecompError
from targets.fileio import write_text
from targets.preprocess import Preprocess, read_images


@dataclass(frozen=True)
class RunContext:
    recipe: Recipe
    run_dir: Path
    task: Task
    splits: DataSplits
    labels: dict[str, np.ndarray]  # "val" and "test": every label of the split, in order
    console: Console
    force: bool = False  # rerun every stage and row, cached or not
    _calibration_sets: dict[tuple, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, recipe: Recipe, run_dir: Path, console: Console, force: bool = False) -> RunContext:
        """Load the recipe's data, check it fits the task, and (on rank 0) write the resolved recipe into the
        run directory."""
        task = TASKS.get(recipe.task)
        splits: DataSplits = DATASETS.get(recipe.data.dataset)(recipe.data)
        if splits.task != task.name:
            raise EdgecompError(
                f"data set {recipe.data.dataset!r} is labelled for {splits.task}, but the recipe's task "
                f"is {task.name}: set task: {splits.task}, or pick a {task.name} data set"
            )
        if not splits.labelled and not recipe.model.num_classes:
            raise EdgecompError(
                f"data set {recipe.data.dataset!r} has no labels: set model.num_classes to the pretrained model's"
            )
        classes, named = recipe.model.num_classes, recipe.data.labels
        if splits.labelled and classes is not None and classes < splits.num_classes:
            scheme = f" under data.labels: {named}" if named != "contiguous" else ""
            raise EdgecompError(
                f"model.num_classes is {classes}, fewer than the {splits.num_classes} classes data set "
                f"{recipe.data.dataset!r} labels{scheme}: unset model.num_classes to use the data's"
            )
        if classes is not None and classes != splits.num_classes and named not in ("contiguous", "coco91"):
            raise EdgecompError(
                f"model.num_classes is {classes}, but data.labels: {named} names {splits.num_classes} classes in "
                "output order: name every output, or unset model.num_classes to use that count"
            )
        labels = {split: np.concatenate([y for _, y in as_numpy(getattr(splits, split))]) for split in ("val", "test")}
        run_dir = Path(run_dir)
        if distributed.is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "recipe.resolved.yaml", dump_recipe(recipe))
        return cls(recipe, run_dir, task, splits, labels, console, force)

    def for_seed(self, seed: int) -> RunContext:
        """The run as one seed's models see it: the recipe's train spec with that one seed (`TrainSpec.with_seed`),
        which drives their init, data order, augmentation, calibration images and cache keys. Shares the data."""
        train = self.recipe.train
        if train.seeds is None and seed == train.seed:
            return self
        return dataclasses.replace(self, recipe=self.recipe.model_copy(update={"train": train.with_seed(seed)}))

    @property
    def metric(self) -> str:
        """The headline metric's name: the task's, or "agreement" (with the dense fp32 model) without labels."""
        return self.task.metric if self.splits.labelled else "agreement"

    def label_by(self, model: torch.nn.Module) -> None:
        """Unlabelled photos: `model`'s top-1 class becomes every image's label, so each later metric is top-1
        agreement with it and fine-tunes learn from its hard predictions (with KD, from its soft ones too)."""
        if self.splits.labelled:
            raise EdgecompError("label_by is for data sets without labels")
        for split in ("train", "val", "test"):
            dataset = getattr(self.splits, split)
            outputs, _ = predict(model, dataset)
            dataset.labels = outputs[0].argmax(axis=1).astype(np.int64)
            if split != "train":
                self.labels[split] = dataset.labels

    @property
    def num_classes(self) -> int:
        return self.recipe.model.num_classes or self.splits.num_classes

    def class_metadata(self) -> dict[str, str]:
        """{"classes": the JSON list of the model's class names in output order}, where the data names every
        output (a model with more outputs than the data has classes gets none)."""
        names = self.splits.classes
        return {"classes": json.dumps(list(names))} if names and len(names) == self.num_classes else {}

    @property
    def example(self) -> torch.Tensor:
        """A zero batch of the model's input shape (for tracing, counting MACs and exporting)."""
        return torch.zeros(self.splits.input_shape)

    def score(self, outputs: list[np.ndarray], split: str = "test") -> dict[str, float]:
        """The task's metrics of `outputs` on the whole of `split`."""
        return self.task.score(outputs, self.labels[split])

    def calibration(self, count: int, root: str | None = None) -> np.ndarray:
        """`count` train images, or `count` photos of the folder `root` read with the data's preprocessing (no
        labels needed), the same ones for every export of one seed's models that asks for as many."""
        seed = self.recipe.train.seed
        key = (count, root, seed)  # shared by the seeds' contexts (`for_seed`)
        if key not in self._calibration_sets:
            if root is None:
                self._calibration_sets[key] = calibration_samples(self.splits, count, seed)
            else:
                self._calibration_sets[key] = folder_samples(
                    Path(root).expanduser(), count, seed, self.splits.preprocess
                )
        return self._calibration_sets[key]

    def accuracy_control(self, max_drop: float) -> AccuracyControl:
        """The validation split and the task's headline metric, for an export that may lose `max_drop` points."""
        labels, task = self.labels["val"], self.task

        def score(outputs: list[np.ndarray], indices: np.ndarray) -> float:
            return task.score(outputs, labels[indices])[task.metric]

        return AccuracyControl(SplitImages(self.splits.val), score, max_drop)


def calibration_samples(splits: DataSplits, n: int, seed: int) -> np.ndarray:
    """A fixed random subset of training images for int8 calibration (never the test split)."""
    rng = np.random.default_rng(seed)
    index = rng.choice(len(splits.train), size=min(n, len(splits.train)), replace=False)
    images = SplitImages(splits.train)
    return np.stack([images[i] for i in sorted(index)])


def folder_samples(root: Path, n: int, seed: int, preprocess: Preprocess) -> np.ndarray:
    """A fixed random subset of `n` photos under `root` (recursively), read as the model's data is."""
    if not root.is_dir():
        raise EdgecompError(f"calibration_root {str(root)!r}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgecompError(f"calibration_root {str(root)!r}: no images in it")
    index = np.random.default_rng(seed).choice(len(files), size=min(n, len(files)), replace=False)
    return read_images([files[i] for i in sorted(index)], preprocess)


class SplitImages:
    """A split's images as numpy arrays, read one at a time (a sequence, not a copy of the split)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.dataset[int(index)][0].numpy()
