"""Photos without labels (`dataset: images`): the dense model labels them, so a PTQ recipe reports top-1
agreement with it, int8 calibrates on a plain folder (`calibration_root`), and a fine-tune distils from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from compress.pipeline import Pipeline
from compress.recipe import load_recipe
from targets.base import EdgecompError

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
COCO = REAL / "coco128" / "train2017"


def write_photos(folder: Path, count: int, size: int = 24) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[: size // 2] //= 1 + i % 4  # some structure that differs between photos
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return folder


def recipe(tmp_path: Path, **parts) -> Path:
    base = {
        "name": "unlabelled",
        "model": {"arch": "mobilenet_v2", "width_mult": 0.25, "small_input": True, "num_classes": 10},
        "data": {"dataset": "images", "root": str(tmp_path / "photos"), "image_size": 16, "batch_size": 8},
        "train": {"epochs": 0, "lr": 0.01},
        "stages": [],
        "baselines": {"scratch": []},
        "exports": [],
        "bench": {"threads": [1], "warmup": 0, "runs": 2},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(base | parts))
    return tmp_path / "recipe.yaml"


def test_a_distillation_runs_on_photos_without_labels_and_scores_agreement_with_dense(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", 40)
    stages = [{"prune": {"importance": "l2", "ratio": 0.5}}, {"finetune": {"epochs": 1, "distill": {"alpha": 1.0}}}]
    results = Pipeline(
        load_recipe(recipe(tmp_path, stages=stages)), tmp_path / "run", console=Console(quiet=True)
    ).run()
    rows = {row["candidate"]: row for row in results["rows"]}
    assert results["metric"] == "agreement" and set(rows) == {"dense", "pruned-kd"}
    assert rows["dense"]["accuracy"] == 1.0  # the dense model agrees with itself on every test photo
    assert 0.0 <= rows["pruned-kd"]["accuracy"] <= 1.0 and rows["pruned-kd"]["samples"] == 8  # 20% of 40
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["finetune"]["epochs"] == 1
    assert "top-1 agreement with dense fp32" in (tmp_path / "run" / "report.md").read_text()


def test_photos_without_labels_refuse_training_the_dense_model_and_a_missing_class_count(tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", 12)
    trained = load_recipe(recipe(tmp_path, train={"epochs": 2}))
    with pytest.raises(EdgecompError, match="has no labels, so the dense model cannot be trained on it"):
        Pipeline(trained, tmp_path / "a", console=Console(quiet=True)).run()
    classless = load_recipe(recipe(tmp_path, model={"arch": "mobilenet_v2", "width_mult": 0.25}))
    with pytest.raises(EdgecompError, match=r"set model\.num_classes"):
        Pipeline(classless, tmp_path / "b", console=Console(quiet=True)).run()
    few = load_recipe(recipe(tmp_path, data={"dataset": "images", "root": str(write_photos(tmp_path / "few", 3))}))
    with pytest.raises(EdgecompError, match=r"3 image\(s\) found; images needs at least 10"):
        Pipeline(few, tmp_path / "c", console=Console(quiet=True)).run()


@pytest.mark.skipif(not COCO.is_dir(), reason=f"no real photos at {COCO}")
def test_a_ptq_recipe_on_real_unlabelled_photos_calibrated_from_a_folder(tmp_path: Path) -> None:
    """The real MobileNetV2 (../shared/real) on COCO128 as a folder of photos, int8 calibrated on the folder:
    fp32 agrees with itself on every test photo, int8 on most (ONNX int8: 93.0% on all 128, `make bench-real`)."""
    parts = {
        "model": {"arch": f"{REAL / 'tf_mobilenet.py'}:mobilenet_v2", "num_classes": 1000},
        "data": {"dataset": "images", "root": str(COCO), "image_size": 224, "normalize": "tf", "crop_pct": 0.875},
        "exports": [
            {"target": "onnx", "precision": ["fp32", "int8"], "calibration_samples": 32, "calibration_root": str(COCO)}
        ],
    }
    results = Pipeline(load_recipe(recipe(tmp_path, **parts)), tmp_path / "run", export_processes=1).run()
    accuracy = {(row["target"], row["precision"]): row["accuracy"] for row in results["rows"]}
    assert results["metric"] == "agreement" and results["failed"] == []
    assert accuracy[("pytorch", "fp32")] == accuracy[("onnx", "fp32")] == 1.0
    assert accuracy[("onnx", "int8")] >= 0.8, accuracy
