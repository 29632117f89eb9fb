"""Preprocessing as data recorded with the model (issue #18): every data set says how its images are made,
every exported file records it, and `python -m targets.predict FILE --images DIR` classifies photos with it
on a machine without torch, agreeing with edgecomp's own PyTorch predictions.

The end-to-end check uses the real MobileNetV3-Small and COCO128 photos from ../shared/real (its README) and
is skipped, saying why, where that folder is absent (set EDGECOMP_REAL to point at another copy).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import targets
from compress.data import DATASETS
from compress.schema import DataSpec
from targets.base import EdgecompError
from targets.predict import main
from targets.preprocess import Preprocess, read_images

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("EDGECOMP_REAL", ROOT.parent / "shared" / "real"))
needs_real = pytest.mark.skipif(
    not (REAL / "tf_mobilenet.py").is_file(), reason=f"no real models at {REAL} (set EDGECOMP_REAL)"
)
# Runs targets.predict where `import torch` fails, as on a device without it.
WITHOUT_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv = ['targets.predict', *sys.argv[1:]]; "
    "runpy.run_module('targets.predict', run_name='__main__')"
)


def predict_without_torch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", WITHOUT_TORCH, *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


# -- the description --------------------------------------------------------------------------------------


def test_preprocess_goes_through_metadata_as_one_string_and_refuses_nonsense() -> None:
    p = Preprocess((224, 224), (0.5,) * 3, (0.5,) * 3, "centre_crop", 0.875)
    metadata = p.to_metadata()
    assert list(metadata) == ["preprocess"] and isinstance(metadata["preprocess"], str)
    assert Preprocess.from_metadata({**metadata, "candidate": "dense"}) == p
    assert Preprocess.from_metadata({"candidate": "dense"}) is None
    with pytest.raises(EdgecompError, match="not readable"):
        Preprocess.from_metadata({"preprocess": '{"size": [8, 8], "colour_order": "BGR"}'})
    with pytest.raises(EdgecompError, match="crop_pct"):
        Preprocess((8, 8), (0.5,) * 3, (0.5,) * 3, "centre_crop")
    with pytest.raises(EdgecompError, match="mean"):
        Preprocess((8, 8), (0.5,) * 3, (0.5,) * 2)


def test_every_data_set_says_how_its_images_are_made() -> None:
    digits = DATASETS.get("digits")(DataSpec(dataset="digits", image_size=16)).preprocess
    assert digits == Preprocess((16, 16), (0.5,) * 3, (0.5,) * 3, "squash", colour="grey")
    imagenet = DATASETS.get("digits")(DataSpec(dataset="digits", image_size=16, normalize="imagenet")).preprocess
    assert (imagenet.mean, imagenet.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_imagefolder_records_its_crop_and_reads_the_pixels_read_images_reads(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (30, 50, 3), np.uint8)).save(tmp_path / split / label / "p.png")
    spec = DataSpec(dataset="imagefolder", root=str(tmp_path), image_size=16, normalize="tf", crop_pct=0.8)
    splits = DATASETS.get("imagefolder")(spec)
    assert splits.preprocess == Preprocess((16, 16), (0.5,) * 3, (0.5,) * 3, "centre_crop", 0.8)
    expected = read_images([tmp_path / "test" / label / "p.png" for label in ("a", "b")], splits.preprocess)
    np.testing.assert_allclose(np.stack([splits.test[i][0].numpy() for i in range(2)]), expected, atol=1e-6)
    squashed = DATASETS.get("imagefolder")(DataSpec(dataset="imagefolder", root=str(tmp_path))).preprocess
    assert (squashed.resize, squashed.crop_pct, squashed.mean) == ("squash", None, (0.485, 0.456, 0.406))


def test_reading_images_without_pillow_says_to_install_it(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(EdgecompError, match="pip install pillow"):
        read_images([tmp_path / "x.jpg"], Preprocess((8, 8), (0.5,) * 3, (0.5,) * 3))


# -- the command line's refusals: one line each -----------------------------------------------------------


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i, suffix in enumerate([".jpg", ".PNG", ".bmp"]):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8)).save(folder / f"{i}{suffix}")
    (folder / "notes.txt").write_text("not an image")
    return folder


def one_error(capsys, argv: list[str]) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_a_file_without_recorded_preprocessing_says_which_flags_to_pass(
    exported: Callable[[str, str], Path], photos: Path, capsys
) -> None:
    """A file made elsewhere (here: exported without edgecomp's run, so its metadata has no preprocessing)."""
    path = exported("onnx", "fp32")
    err = one_error(capsys, [str(path), "--images", str(photos)])
    assert "records no preprocessing" in err and "--size" in err and "--mean" in err and "--crop-pct" in err
    assert main([str(path), "--images", str(photos), "--size", "32", "--mean", "0.5", "--std", "0.5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [image["image"] for image in result["images"]] == ["0.jpg", "1.PNG", "2.bmp"]
    assert all(len(image["top"]) == 5 for image in result["images"])
    assert result["preprocess"]["resize"] == "squash" and result["preprocess"]["mean"] == [0.5, 0.5, 0.5]


def test_an_empty_folder_and_a_detector_are_one_error_each(
    tiny_net: torch.nn.Module, photos: Path, tmp_path: Path, capsys
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    recorded = Preprocess((32, 32), (0.5,) * 3, (0.5,) * 3).to_metadata()
    classifier = targets.get_target("onnx").export(
        tiny_net, torch.zeros(1, 3, 32, 32), "fp32", tmp_path / "c.onnx", None, {"outputs": "logits", **recorded}
    )
    assert "no images" in one_error(capsys, [str(classifier), "--images", str(empty)])
    detector = targets.get_target("onnx").export(
        tiny_net, torch.zeros(1, 3, 32, 32), "fp32", tmp_path / "d.onnx", None, {"outputs": "logits,boxes", **recorded}
    )
    assert "not a classifier" in one_error(capsys, [str(detector), "--images", str(photos)])
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)))
    assert main([str(classifier), "--images", str(photos), "--top-k", "2", "--labels", str(labels)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "32x32 squash" in lines[0] and len(lines) == 4 and lines[1].startswith("0.jpg: ") and "digit " in lines[1]


# -- end to end, on the real network ----------------------------------------------------------------------


@needs_real
@pytest.mark.slow
def test_predict_on_a_device_without_torch_agrees_with_edgecomp_on_real_photos(tmp_path: Path) -> None:
    """`edgecomp run` of a PTQ-only recipe on the real MobileNetV3-Small (imagefolder, `normalize: tf`,
    `crop_pct`, `labels: imagenet`) exports fp32 files; `targets.predict --images` on all 128 COCO128 photos,
    with torch not importable, gives each photo the top-1 class that the PyTorch model gives it on the same
    photos read through compress.data's imagefolder transform, named as ImageNet's classes are."""
    import yaml

    from compress.data.class_names import imagenet_classes
    from compress.data.folders import ImageFileDataset, photo_preprocess
    from compress.models import load_checkpoint
    from compress.pipeline import Pipeline
    from compress.recipe import load_recipe
    from compress.train import predict

    paths = sorted((REAL / "coco128" / "train2017").glob("*.jpg"))
    for split, chosen in {"train": paths[:4], "val": paths[4:8], "test": paths[8:12]}.items():
        for i, path in enumerate(chosen):  # labels do not matter here: the files are what is checked
            folder = tmp_path / "data" / split / ("n01440764", "n01443537")[i % 2]  # tench, goldfish
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
    recipe = {
        "name": "real-predict",
        "model": {"arch": f"{REAL / 'tf_mobilenet.py'}:mobilenet_v3_small", "num_classes": 1000},
        "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"), "image_size": 224, "normalize": "tf"}
        | {"crop_pct": 0.875, "batch_size": 16, "labels": "imagenet"},
        "train": {"epochs": 0},
        "stages": [],
        "baselines": {"scratch": []},
        "exports": [{"target": target, "precision": ["fp32"]} for target in ("tflite", "onnx")],
        "bench": {"threads": [1], "warmup": 1, "runs": 2},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(tmp_path / "recipe.yaml")
    results = Pipeline(loaded, tmp_path / "run", export_processes=1).run()
    assert results["failed"] == []

    photos = tmp_path / "photos"
    shutil.copytree(REAL / "coco128" / "train2017", photos)
    model = load_checkpoint(tmp_path / "run" / "dense" / "model.pt", loaded.model)  # the model the files are of
    dataset = ImageFileDataset(paths, np.zeros(len(paths), np.int64), photo_preprocess(loaded.data))
    with torch.no_grad():
        edgecomp = predict(model, dataset)[0][0].argmax(1)
    for file in ("tflite-fp32.tflite", "onnx-fp32.onnx"):
        done = predict_without_torch(
            str(tmp_path / "run" / "exports" / "dense" / file), "--images", str(photos), "--json"
        )
        assert done.returncode == 0, done.stderr
        top = [image["top"][0] for image in json.loads(done.stdout)["images"]]
        top1 = np.array([entry["class"] for entry in top])
        agreement = float(np.mean(top1 == edgecomp))
        assert len(top1) == 128 and agreement >= 0.99, (file, agreement)
        # named as the file records ImageNet's classes (`data.labels: imagenet`), without --labels
        assert [entry["label"] for entry in top] == [imagenet_classes().display[c] for c in top1]
