"""torchvision's COCO detectors as they are (`data.labels: coco91`, issue #18): COCO category ids to the weights'
91 output slots and back, refusals of categories that are not COCO's, the weights' paths (a local .pth, and
`weights: torchvision` offline), and the shipped PTQ-only recipe end to end on a 91-slot SSDLite with random
weights (the real COCO weights are not on the test machines: their mAP is not measured here).

The mapping tests read the real COCO128 annotation file (COCO's own ids, with gaps) from ../shared/real (its
README) and are skipped, saying why, where that folder is absent (set EDGECOMP_REAL to point at another copy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large as torchvision_ssdlite

import targets
from compress.data import DATASETS
from compress.data.categories import category_map, coco91_slots
from compress.data.detection_files import EDGE_TOLERANCE_PX, MAX_BOXES
from compress.models import load_pretrained
from compress.pipeline import Pipeline
from compress.recipe import load_recipe
from compress.schema import DataSpec
from compress.tasks.coco_map import coco_map
from targets.base import EdgecompError
from targets.detect import Detections

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("EDGECOMP_REAL", ROOT.parent / "shared" / "real"))
COCO128 = REAL / "coco128" / "annotations" / "instances_train2017.json"
needs_coco128 = pytest.mark.skipif(not COCO128.is_file(), reason=f"no COCO128 annotations at {COCO128} (EDGECOMP_REAL)")
UNUSED = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # COCO ids 1..90 no category has
IMAGE = (64, 48)  # width, height of the generated fixture images


def coco_root(folder: Path, annotation: dict, images: Path | None = None) -> Path:
    """A coco data.root whose train and val files are both `annotation` (val2017 is the test split), its images
    in `images` (linked) or generated as noise for every image the file lists."""
    (folder / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (folder / "annotations" / f"instances_{split}.json").write_text(json.dumps(annotation))
        if images is not None:
            (folder / split).symlink_to(images)
    if images is None:
        from PIL import Image

        rng = np.random.default_rng(0)
        (folder / "train2017").mkdir()
        for image in annotation["images"]:
            pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "train2017" / image["file_name"])
        (folder / "val2017").symlink_to(folder / "train2017")
    return folder


def coco_names(ids: list[int]) -> list[dict]:
    slots = coco91_slots()
    return [{"id": i, "name": slots[i]} for i in ids]


def generated(categories: list[dict], count: int, seed: int = 0) -> dict:
    """`count` images with one to three boxes each, of the given categories."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "file_name": f"{i:03d}.png", "width": IMAGE[0], "height": IMAGE[1]} for i in range(count)]
    annotations = []
    for image in images:
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 30), rng.uniform(0, 20)
            box = [x, y, rng.uniform(5, IMAGE[0] - x), rng.uniform(5, IMAGE[1] - y)]
            category = categories[rng.integers(len(categories))]["id"]
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category})
            annotations[-1] |= {"bbox": box, "iscrowd": 0, "area": box[2] * box[3]}
    return {"images": images, "annotations": annotations, "categories": categories}


# ---- the mapping, on the real COCO128 file ----------------------------------------------------------------


@needs_coco128
def test_coco91_sends_each_category_id_of_the_real_file_to_the_slot_of_its_name() -> None:
    data = json.loads(COCO128.read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert len(names) == 80 and set(range(1, 91)) - set(names) == UNUSED  # the file has COCO's gaps
    mapped = category_map(names, "coco91", COCO128)
    slots = coco91_slots()
    assert mapped.num_classes == 90 and len(slots) == 91 and slots[0] == "__background__"
    for category, name in names.items():
        assert slots[mapped.classes[category] + 1] == name  # class c is output slot c + 1
    contiguous = category_map(names, "contiguous", COCO128)
    assert contiguous.num_classes == 80 and sorted(contiguous.classes.values()) == list(range(80))
    assert contiguous.classes[13] == 11 and mapped.classes[13] == 12  # stop sign: after the gap at 12
    labels = np.array([0, 11, 12, 89, -1])
    assert mapped.category_ids(labels).tolist() == [1, -1, 13, 90, -1]  # class 11 is the unused slot 12


def truth_from_json(data: dict) -> np.ndarray:
    """[N, M, 5] (category id, normalised x1, y1, x2, y2) straight from the file, images by id, crowds and
    zero-area boxes dropped, as the loader drops them; built apart from the loader to check it."""
    rows = []
    for image in sorted(data["images"], key=lambda image: image["id"]):
        width, height = image["width"], image["height"]
        boxes = []
        for a in data["annotations"]:
            if a["image_id"] != image["id"] or a.get("iscrowd", 0):
                continue
            x, y, w, h = a["bbox"]
            box = np.clip([x / width, y / height, (x + w) / width, (y + h) / height], 0, 1)
            if box[2] > box[0] and box[3] > box[1]:
                boxes.append([a["category_id"], *box])
        rows.append(boxes)
    truth = np.full((len(rows), MAX_BOXES, 5), -1.0)
    for i, boxes in enumerate(rows):
        truth[i, : len(boxes)] = np.reshape(boxes, (-1, 5))
    return truth


def as_detections(targets: np.ndarray, labels) -> list[Detections]:
    """Each image's ground-truth rows as detections of score 1, labelled by `labels(classes)`."""
    found = []
    for rows in targets:
        rows = rows[rows[:, 0] >= 0]
        boxes, scores = rows[:, 1:].astype(np.float32), np.ones(len(rows), np.float32)
        found.append(Detections(boxes, scores, np.asarray(labels(rows[:, 0].astype(np.int64)))))
    return found


@needs_coco128
def test_ground_truth_through_the_slots_and_back_scores_map_one_on_the_real_file(tmp_path: Path) -> None:
    """The loader's slot labels, read back as category ids, are the file's own boxes and ids: mAP 1.0 against
    ground truth built from the JSON alone; read back as if contiguous, the same boxes score far less."""
    data = json.loads(COCO128.read_text())
    root = coco_root(tmp_path / "coco128", data, COCO128.parents[1] / "train2017")
    spec = DataSpec(dataset="coco", root=str(root), image_size=32, labels="coco91")
    test = DATASETS.get("coco")(spec).test
    assert len(test) == 128 and DATASETS.get("coco")(spec).num_classes == 90
    slots = np.stack([np.asarray(test[i][1]) for i in range(len(test))])  # [128, 100, 5] in slot classes
    mapped = category_map({c["id"]: c["name"] for c in data["categories"]}, "coco91", COCO128)
    truth = truth_from_json(data)
    back = as_detections(slots, mapped.category_ids)
    scores = coco_map(back, truth)
    assert scores["map"] == pytest.approx(1.0) and scores["map50"] == pytest.approx(1.0)
    assert coco_map(as_detections(slots, lambda c: c), slots)["map"] == pytest.approx(1.0)  # slot space itself
    contiguous = category_map({c["id"]: c["name"] for c in data["categories"]}, "contiguous", COCO128)
    wrong = coco_map(as_detections(slots, contiguous.category_ids), truth)["map"]
    assert wrong < 0.2, "reading slots as contiguous classes should mislabel nearly every box"
    tolerance = EDGE_TOLERANCE_PX / min(min(image["width"], image["height"]) for image in data["images"])
    assert np.abs(np.where(truth >= 0, truth, 0)[..., 1:] - np.where(slots >= 0, slots, 0)[..., 1:]).max() < tolerance


# ---- refusals -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ({1: "aeroplane", 2: "bicycle"}, r"category 1 is 'aeroplane' but slot 1 .* 'person'"),  # VOC's, numbered 1..
        ({1: "person", 12: "street sign"}, r"category 12 is 'street sign' .* 'N/A'"),  # an id COCO left unused
        ({1: "person", 91: "hair brush"}, r"category 91 \('hair brush'\) has no output slot"),
        ({0: "person"}, r"category 0 \('person'\) has no output slot"),
    ],
)
def test_categories_that_are_not_cocos_are_refused_with_the_first_that_differs(
    tmp_path: Path, categories: dict[int, str], message: str
) -> None:
    root = coco_root(tmp_path / "c", generated([{"id": i, "name": name} for i, name in categories.items()], 2))
    with pytest.raises(EdgecompError, match=message) as error:
        DATASETS.get("coco")(DataSpec(dataset="coco", root=str(root), image_size=32, labels="coco91"))
    assert "use labels: contiguous" in str(error.value) and "\n" not in str(error.value)
    assert DATASETS.get("coco")(DataSpec(dataset="coco", root=str(root), image_size=32)).num_classes == len(categories)


def test_names_are_compared_without_case_or_extra_spaces(tmp_path: Path) -> None:
    categories = [{"id": 10, "name": "Traffic  Light"}, {"id": 90, "name": "toothbrush"}]
    root = coco_root(tmp_path / "c", generated(categories, 2))
    splits = DATASETS.get("coco")(DataSpec(dataset="coco", root=str(root), image_size=32, labels="coco91"))
    assert splits.num_classes == 90 and set(np.unique(splits.test[0][1][:, 0])) <= {-1, 9, 89}
    assert splits.classes == coco91_slots()[1:]  # each output's name, as the weights name their slots
    contiguous = DATASETS.get("coco")(DataSpec(dataset="coco", root=str(root), image_size=32))
    assert contiguous.classes == ("Traffic  Light", "toothbrush")  # the file's names, by class index


def test_coco91_is_for_coco_and_num_classes_must_hold_its_slots(tmp_path: Path) -> None:
    with pytest.raises(EdgecompError, match="labels: coco91 maps COCO category ids, so it goes with dataset: coco"):
        load_recipe("ssdlite-coco-pretrained", ["data.dataset=voc"])
    root = coco_root(tmp_path / "c", generated(coco_names([1, 3]), 4))
    recipe = load_recipe("ssdlite-coco-pretrained", [f"data.root={root}", "model.num_classes=80"])
    with pytest.raises(EdgecompError, match=r"model.num_classes is 80, fewer than the 90 classes .* coco91"):
        Pipeline(recipe, tmp_path / "run").run()


def test_normalize_applies_to_coco_images(tmp_path: Path) -> None:
    from PIL import Image

    root = coco_root(tmp_path / "c", generated(coco_names([1]), 2))
    for image in (root / "train2017").iterdir():
        Image.new("RGB", IMAGE, (255, 0, 0)).save(image)
    spec = {"dataset": "coco", "root": str(root), "image_size": 8}
    tf, default = (DATASETS.get("coco")(DataSpec(**spec, **extra)).test[0][0] for extra in ({"normalize": "tf"}, {}))
    torch.testing.assert_close(tf[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # [-1, 1], as torchvision's SSDLite
    imagenet = (torch.tensor([1.0, 0, 0]) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(default[:, 0, 0], imagenet)  # the default: ImageNet's statistics, as before


# ---- weights --------------------------------------------------------------------------------------------------


def random_coco_ssdlite(seed: int = 0) -> dict[str, torch.Tensor]:
    """torchvision's 91-slot SSDLite with random weights whose outputs are a few units, not torchvision's near-zero
    init (N(0, 0.03) convs give logits of ~1e-20 by the last layer), so parity and int8 mean something."""
    torch.manual_seed(seed)
    model = torchvision_ssdlite(weights=None, weights_backbone=None, num_classes=91)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    return model.state_dict()


def test_torchvision_weights_offline_fail_with_one_line_saying_how_to_use_a_local_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = torchvision_ssdlite(weights=None, weights_backbone=None, num_classes=91)
    with pytest.raises(EdgecompError) as error:
        load_pretrained(model, "torchvision", "ssdlite320_mobilenet_v3_large")
    message = str(error.value)
    assert "\n" not in message and "ssdlite320_mobilenet_v3_large_coco-a79551df.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message and "--set model.weights=" in message


@pytest.mark.slow
def test_the_shipped_recipe_offline_stops_with_that_line_and_no_traceback(tmp_path: Path) -> None:
    """A real process with no network (proxies pointing nowhere) and an empty torch hub cache: the download fails,
    and `edgecomp run` prints one error line and exits 2 before any export."""
    root = coco_root(tmp_path / "c", generated(coco_names([1, 3]), 4))
    unreachable = "http://127.0.0.1:9"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200", "TORCH_HOME": str(tmp_path / "th")}
    env |= {"HOME": str(tmp_path), "https_proxy": unreachable, "http_proxy": unreachable}
    env |= {"HTTPS_PROXY": unreachable, "HTTP_PROXY": unreachable}
    overrides = ["--set", f"data.root={root}", "--set", "data.image_size=64", "--runs-dir", str(tmp_path / "runs")]
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", "ssdlite-coco-pretrained", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output  # besides it, torch's own "Downloading: URL to PATH" line
    assert "could not download torchvision's SSDLite320_MobileNet_V3_Large_Weights.COCO_V1" in errors[0]
    assert "--set model.weights=" in errors[0]
    assert not (tmp_path / "runs" / "ssdlite-coco-pretrained" / "exports").exists()


def test_untrained_class_predictors_are_not_evaluated_as_they_are(tmp_path: Path) -> None:
    """A 91-slot .pth on contiguous labels (2 classes) leaves the class predictors fresh; with train.epochs 0
    nothing would train them, and the run says so instead of reporting a random head's mAP."""
    root = coco_root(tmp_path / "c", generated(coco_names([1, 3]), 4))
    torch.save(random_coco_ssdlite(), tmp_path / "w.pth")
    overrides = [f"data.root={root}", f"model.weights={tmp_path / 'w.pth'}", "data.labels=contiguous"]
    recipe = load_recipe("ssdlite-coco-pretrained", [*overrides, "data.image_size=64"])
    with pytest.raises(EdgecompError, match=r"do not fit this model's 2 classes.*train.epochs is 0.*coco91"):
        Pipeline(recipe, tmp_path / "run").run()


# ---- the shipped PTQ-only recipe, reduced -----------------------------------------------------------------


REDUCED = [
    "data.image_size=160",
    "data.batch_size=16",
    "exports=[{target: openvino, precision: [fp32, int8], calibration_samples: 8}]",
    "bench.runs=3",
    "bench.warmup=1",
    "bench.threads=[1]",
]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> tuple[dict, Path, dict, dict]:
    """The shipped recipe on 12 generated COCO-named images (ids across the gaps: 1, 13, 44, 90) and a local .pth
    of a random 91-slot SSDLite, at 160 px, with OpenVINO fp32 and int8."""
    folder = tmp_path_factory.mktemp("coco91")
    data = generated(coco_names([1, 13, 44, 90]), 12)
    root = coco_root(folder / "root", data)
    weights = random_coco_ssdlite()
    torch.save(weights, folder / "w.pth")
    overrides = [f"data.root={root}", f"model.weights={folder / 'w.pth'}", *REDUCED]
    recipe = load_recipe("ssdlite-coco-pretrained", overrides)
    return Pipeline(recipe, folder / "run").run(), folder / "run", weights, data


@pytest.mark.slow
def test_a_local_91_slot_checkpoint_is_evaluated_and_quantized_as_it_is(pretrained_run) -> None:
    results, run_dir, weights, _ = pretrained_run
    assert (results["task"], results["metric"]) == ("detection", "map50")
    rows = results["rows"]
    assert {(r["candidate"], r["target"], r["precision"]) for r in rows} == {
        ("dense", "pytorch", "fp32"),
        ("dense", "openvino", "fp32"),
        ("dense", "openvino", "int8"),
    }
    for row in rows:
        assert row["epochs"] == 0 and row["accuracy"] == row["scores"]["map50"]
        assert 0 <= row["scores"]["map"] <= row["scores"]["map50"] <= 1
        low, high = row["accuracy_interval"]  # mAP@.5's bootstrap over the 12 test images
        assert row["samples"] == 12 and 0 <= low <= row["accuracy"] <= high <= 1
    fp32 = next(r for r in rows if r["target"] == "openvino" and r["precision"] == "fp32")
    assert fp32["parity"]["max_abs_diff"] < targets.get_target("openvino").TOLERANCE["fp32"]
    int8 = next(r for r in rows if r["precision"] == "int8")
    assert int8["parity"]["max_abs_diff"] > 1e-4  # quantized, not the float file again
    saved = torch.load(run_dir / "dense" / "model.pt", weights_only=True)["state_dict"]
    assert saved.keys() == weights.keys()
    assert all(torch.equal(saved[k], weights[k]) for k in weights)  # every weight as loaded, the class head too
    assert saved["head.classification_head.module_list.0.1.weight"].shape[0] == 6 * 91


@pytest.mark.slow
def test_the_run_scores_against_the_files_ids_in_slot_classes(pretrained_run) -> None:
    """The labels the run scored against are the file's category ids less one (slots), on every test image."""
    _, run_dir, _, data = pretrained_run
    recipe = load_recipe(run_dir / "recipe.resolved.yaml")
    labels = DATASETS.get("coco")(recipe.data).test
    classes = np.stack([np.asarray(labels[i][1]) for i in range(len(labels))])[..., 0]
    expected = truth_from_json(data)[..., 0]
    assert np.array_equal(np.where(expected >= 0, expected - 1, -1), classes)
    assert {int(c) for c in classes[classes >= 0]} == {0, 12, 43, 89}
