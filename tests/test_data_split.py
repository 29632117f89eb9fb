"""`data.split`: the val and test shares of a pool of images edgecomp splits itself (a PTQ-only run, which trains
nothing, scores most of a photo folder), refused for sets whose splits are fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import photo_folder

from compress.data import DATASETS
from compress.recipe import load_recipe
from compress.schema import DataSpec
from targets.base import EdgecompError


def _sizes(spec: DataSpec) -> tuple[int, int, int]:
    splits = DATASETS.get(spec.dataset)(spec)
    return len(splits.train), len(splits.val), len(splits.test)


def _labels(dataset) -> np.ndarray:
    return np.array([dataset[i][1] for i in range(len(dataset))])


def test_split_sets_the_val_and_test_shares_of_a_pool(tmp_path: Path) -> None:
    digits = DataSpec(dataset="digits", image_size=8)
    assert _sizes(digits) == (1257, 180, 360)  # 70/10/20 unless the recipe says otherwise
    splits = DATASETS.get("digits")(DataSpec(dataset="digits", image_size=8, split={"val": 0.1, "test": 0.7}))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (359, 180, 1258)
    assert np.bincount(_labels(splits.test)).min() >= 120  # still stratified: ~126 of each digit

    root = photo_folder(tmp_path / "photos", {"cat": 20, "dog": 20})
    folder = DataSpec(dataset="imagefolder", root=str(root), image_size=8, split={"val": 0.1, "test": 0.7})
    assert _sizes(folder) == (8, 4, 28)
    assert np.bincount(_labels(DATASETS.get("imagefolder")(folder).test)).tolist() == [14, 14]
    unlabelled = DataSpec(dataset="images", root=str(root), image_size=8, split={"val": 0.25, "test": 0.5})
    assert _sizes(unlabelled) == (10, 10, 20)


def test_split_shares_must_leave_training_images() -> None:
    with pytest.raises(EdgecompError, match=r"val 0.3 \+ test 0.7 leave no training images"):
        load_recipe("quickstart", ["data.split={val: 0.3, test: 0.7}"])
    with pytest.raises(EdgecompError, match=r"data.split.test"):
        load_recipe("quickstart", ["data.split={test: 1.5}"])


def test_split_is_refused_where_the_splits_are_not_edgecomps_to_choose(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    photo_folder(root / "train", {"cat": 3, "dog": 3})
    photo_folder(root / "test", {"cat": 2, "dog": 2})
    spec = DataSpec(dataset="imagefolder", root=str(root), image_size=8, split={"test": 0.5})
    with pytest.raises(EdgecompError, match=r"data.split: imagefolder has its own split folders in .*photos, so"):
        DATASETS.get("imagefolder")(spec)
    assert _sizes(spec.model_copy(update={"split": None})) == (5, 1, 4)  # its own folders, as before
    for recipe in ("ssdlite-quickstart", "mobilenetv2-cifar10"):  # digit scenes; CIFAR-10's official test split
        with pytest.raises(EdgecompError, match=r"data.split: \w+ comes with its own splits, so there is nothing"):
            load_recipe(recipe, ["data.split={test: 0.5}"])  # refused when the recipe loads, before any file is read
