"""Detection data: the generated digit scenes (determinism, exact boxes, disjoint handwriting) and the COCO
and VOC loaders on small folders written here (boxes, class mapping, dropped objects, error messages)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from compress.data import DATASETS, DataSplits
from compress.data import detection_files as files
from compress.data import digit_scenes as scenes
from compress.schema import DataSpec
from targets.base import EdgecompError

# ---- digit_scenes ----------------------------------------------------------------------------------------------


def objects(targets: np.ndarray) -> np.ndarray:
    """[N] number of object rows per target."""
    return (targets[..., 0] >= 0).sum(1)


def test_scenes_are_byte_identical_when_rebuilt():
    fresh = scenes.build_scenes.__wrapped__("val", 300)
    again = scenes.build_scenes.__wrapped__("val", 300)
    for name in ("images", "targets", "sources", "placements"):
        assert getattr(fresh, name).tobytes() == getattr(again, name).tobytes(), name


def test_scenes_of_each_split_draw_on_their_own_handwriting():
    pools = scenes.digit_pools()
    assert not set(pools["train"]) & set(pools["val"])
    assert not set(pools["train"]) & set(pools["test"])
    assert not set(pools["val"]) & set(pools["test"])
    for split, count in scenes.SCENES.items():
        used = scenes.build_scenes(split, count).sources
        assert set(used[used >= 0]) <= set(pools[split]), split


@pytest.mark.parametrize("split", list(scenes.SCENES))
def test_scene_targets_hold_one_to_six_valid_boxes_then_padding(split):
    built = scenes.build_scenes(split, scenes.SCENES[split])
    targets = built.targets
    assert targets.shape == (scenes.SCENES[split], scenes.TARGET_ROWS, 5) and targets.dtype == np.float32
    counts = objects(targets)
    assert counts.min() == 1 and counts.max() == scenes.MAX_OBJECTS
    assert len(np.unique(counts)) == scenes.MAX_OBJECTS  # every count occurs
    slot = np.arange(scenes.TARGET_ROWS)
    real = slot[None] < counts[:, None]  # objects come first
    assert np.all(targets[~real] == -1) and np.all(built.sources[~real] == -1)
    rows = targets[real]
    assert set(np.unique(rows[:, 0])) == set(range(scenes.NUM_CLASSES))
    assert np.all((rows[:, 1:] >= 0) & (rows[:, 1:] <= 1))
    assert np.all(rows[:, 3] > rows[:, 1]) and np.all(rows[:, 4] > rows[:, 2])


def test_scene_labels_are_the_source_digits_labels():
    _, labels = scenes._source_digits()
    built = scenes.build_scenes("train", scenes.SCENES["train"])
    real = built.sources >= 0
    assert np.array_equal(built.targets[real][:, 0], labels[built.sources[real]].astype(np.float32))


def placed_masks(built: scenes.Scenes, index: int) -> list[np.ndarray]:
    """Each object's ink mask of scene `index`, placed on the canvas, recomputed from its source and placement."""
    digits, _ = scenes._source_digits()
    masks = []
    for source, (x0, y0, side) in zip(built.sources[index], built.placements[index], strict=True):
        if source < 0:
            break
        canvas = np.zeros((scenes.CANVAS, scenes.CANVAS), dtype=bool)
        ink = scenes.digit_ink(digits[source][None], int(side))[0]
        canvas[y0 : y0 + side, x0 : x0 + side] = ink > scenes.INK_THRESHOLD
        masks.append(canvas)
    return masks


def test_boxes_are_the_tight_boxes_of_the_drawn_digits():
    built = scenes.build_scenes("test", scenes.SCENES["test"])
    background = scenes.render_backgrounds("test", scenes.SCENES["test"])
    changed_ink = total_ink = 0
    for index in range(0, len(built.images), 5):
        changed = (built.images[index] != background[index]).any(0)
        masks = placed_masks(built, index)
        assert not (changed & ~np.any(masks, axis=0)).any(), "pixels drawn outside every digit's ink"
        for mask, row in zip(masks, built.targets[index], strict=False):
            ys, xs = np.nonzero(mask)
            tight = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / scenes.CANVAS
            np.testing.assert_allclose(row[1:], tight, atol=1e-6)
            changed_ink += (changed & mask).sum()
            total_ink += mask.sum()
    assert changed_ink / total_ink > 0.97  # the ink visibly differs from the background under it


def test_digit_scenes_loader_gives_normalised_images_and_stackable_targets():
    splits = DATASETS.get("digit_scenes")(DataSpec(dataset="digit_scenes", image_size=64, train_subset=100))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (100, 300, 300)
    assert splits.num_classes == 10 and splits.image_size == 64
    images, targets = default_collate([splits.test[i] for i in range(4)])
    assert images.shape == (4, 3, 64, 64) and images.dtype == torch.float32
    assert targets.shape == (4, scenes.TARGET_ROWS, 5) and targets.dtype == torch.float32
    built = scenes.build_scenes("test", scenes.SCENES["test"])
    assert np.array_equal(targets.numpy(), built.targets[:4])
    full = DATASETS.get("digit_scenes")(DataSpec(dataset="digit_scenes", image_size=scenes.CANVAS))
    image, _ = full.test[0]
    expected = (built.images[0] / 255.0 - np.array(full.mean)[:, None, None]) / np.array(full.std)[:, None, None]
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-5)


def test_train_subset_is_a_fixed_random_subset():
    spec = DataSpec(dataset="digit_scenes", train_subset=50)
    first, second = (DATASETS.get("digit_scenes")(spec).train for _ in range(2))
    assert first.indices == second.indices and len(set(first.indices)) == 50
    assert max(first.indices) > 1000  # drawn from the whole split, not its head


# ---- COCO fixtures -------------------------------------------------------------------------------------------

SIZE = (40, 30)  # width, height of every fixture image


def write_image(path: Path, colour=(255, 0, 0), size=SIZE) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def coco_json(path: Path, images: dict[int, str], annotations: list[dict], categories=(7, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "images": [{"id": i, "file_name": name, "width": SIZE[0], "height": SIZE[1]} for i, name in images.items()],
        "annotations": [{"id": n, "iscrowd": 0, **a} for n, a in enumerate(annotations)],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
    }
    path.write_text(json.dumps(data))


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    """train2017 (5 images) under root/, val2017 (3 images) under root/images/: both layouts COCO ships in."""
    train = {i: f"{i:04d}.png" for i in range(1, 6)}
    coco_json(
        tmp_path / "annotations/instances_train2017.json",
        train,
        [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}],
    )
    for name in train.values():
        write_image(tmp_path / "train2017" / name)
    test = {10: "a.png", 11: "b.png", 12: "c.png"}
    coco_json(
        tmp_path / "annotations/instances_val2017.json",
        test,
        [
            {"image_id": 10, "category_id": 7, "bbox": [4, 6, 10, 12]},
            {"image_id": 10, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
            {"image_id": 10, "category_id": 3, "bbox": [20.5, 3, 19.5, 27]},
            {"image_id": 12, "category_id": 3, "bbox": [1, 1, 2, 2]},
        ],
    )
    for name in test.values():
        write_image(tmp_path / "images/val2017" / name, colour=(0, 255, 0))
    return tmp_path


def load(dataset: str, root: Path, **spec) -> DataSplits:
    return DATASETS.get(dataset)(DataSpec(dataset=dataset, root=str(root), image_size=16, **spec))


def test_coco_boxes_classes_and_crowd_dropping(coco_root):
    splits = load("coco", coco_root)
    assert splits.num_classes == 2 and (len(splits.train), len(splits.val), len(splits.test)) == (4, 1, 3)
    image, target = splits.test[0]  # a.png: ids sorted, so category 3 -> class 0 and 7 -> class 1
    expected = [[1, 4 / 40, 6 / 30, 14 / 40, 18 / 30], [0, 20.5 / 40, 3 / 30, 1.0, 1.0]]
    np.testing.assert_allclose(target[:2].numpy(), expected, atol=1e-6)
    assert target.shape == (files.MAX_BOXES, 5) and torch.all(target[2:] == -1)  # the crowd region is gone
    assert torch.all(splits.test[1][1] == -1)  # an image without objects is kept, all padding
    green = (torch.tensor([0.0, 1.0, 0.0]) - torch.tensor(splits.mean)) / torch.tensor(splits.std)
    torch.testing.assert_close(image, green.view(3, 1, 1).expand(3, 16, 16))


def test_coco_validation_is_a_fixed_part_of_train(coco_root):
    first, second = load("coco", coco_root), load("coco", coco_root)
    assert first.val.files == second.val.files
    assert not set(first.val.files) & set(first.train.files)
    assert len(first.val.files + first.train.files) == 5


def test_coco_keeps_the_largest_boxes_of_a_crowded_image_and_warns(coco_root):
    crowd = [{"image_id": 10, "category_id": 3, "bbox": [0, 0, (n + 1) * 0.3, 1]} for n in range(102)]
    coco_json(coco_root / "annotations/instances_val2017.json", {10: "a.png"}, crowd)
    with pytest.warns(UserWarning, match="more than 100 objects"):
        splits = load("coco", coco_root)
    widths = (splits.test[0][1][:, 3] * 40).numpy()
    np.testing.assert_allclose(np.sort(widths), np.arange(3, 103) * 0.3, rtol=1e-5)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"image_id": 10, "category_id": 3, "bbox": [35, 0, 10, 10]}, "not inside its 40x30 image"),
        ({"image_id": 10, "category_id": 3, "bbox": [5, 5, -2, 3]}, "ends before it starts"),
        ({"image_id": 10, "category_id": 5, "bbox": [0, 0, 1, 1]}, "unknown category_id 5"),
        ({"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]}, "image ids not in 'images'"),
    ],
)
def test_coco_bad_annotations_say_what_is_wrong(coco_root, annotation, message):
    coco_json(coco_root / "annotations/instances_val2017.json", {10: "a.png"}, [annotation])
    with pytest.raises(EdgecompError, match=message):
        load("coco", coco_root)


def test_coco_missing_files_say_what_is_wrong(coco_root, tmp_path):
    with pytest.raises(EdgecompError, match=r"needs data.root"):
        DATASETS.get("coco")(DataSpec(dataset="coco"))
    with pytest.raises(EdgecompError, match="no such folder"):
        load("coco", tmp_path / "nowhere")
    (coco_root / "train2017/0003.png").unlink()
    with pytest.raises(EdgecompError, match=r"0003.png is missing"):
        load("coco", coco_root)
    (coco_root / "annotations/instances_train2017.json").unlink()
    with pytest.raises(EdgecompError, match="expected one instances_train"):
        load("coco", coco_root)


def test_coco_bad_images_fail_on_access(coco_root):
    (coco_root / "images/val2017/a.png").write_bytes(b"not an image")
    write_image(coco_root / "images/val2017/b.png", size=(20, 20))
    splits = load("coco", coco_root)
    with pytest.raises(EdgecompError, match="cannot read image"):
        splits.test[0]
    with pytest.raises(EdgecompError, match="image is 20x20 but its annotation says 40x30"):
        splits.test[1]


# ---- VOC fixtures ---------------------------------------------------------------------------------------------


def voc_xml(path: Path, boxes: list[tuple], size=SIZE) -> None:
    """boxes: (name, difficult, xmin, ymin, xmax, ymax), VOC's 1-based inclusive pixel indices."""
    root = ElementTree.Element("annotation")
    dims = ElementTree.SubElement(root, "size")
    for tag, value in zip(("width", "height", "depth"), (*size, 3), strict=True):
        ElementTree.SubElement(dims, tag).text = str(value)
    for name, difficult, *box in boxes:
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = name
        ElementTree.SubElement(obj, "difficult").text = str(difficult)
        bndbox = ElementTree.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box, strict=True):
            ElementTree.SubElement(bndbox, tag).text = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ElementTree.ElementTree(root).write(path)


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOCdevkit/VOC2007 with 4 trainval and 2 test images."""
    root = tmp_path / "VOCdevkit" / "VOC2007"
    ids = {"trainval": ["000001", "000002", "000003", "000004"], "test": ["000005", "000006"]}
    (root / "ImageSets/Main").mkdir(parents=True)
    for split, names in ids.items():
        (root / f"ImageSets/Main/{split}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            voc_xml(root / f"Annotations/{name}.xml", [("dog", 0, 2, 2, 10, 10)])
            write_image(root / f"JPEGImages/{name}.jpg")
    boxes = [("person", 0, 1, 1, 20, 15), ("car", 1, 5, 5, 9, 9), ("tvmonitor", 0, 11, 6, 40, 30)]
    voc_xml(root / "Annotations/000005.xml", boxes)
    return root


def test_voc_boxes_classes_and_difficult_dropping(voc_root):
    splits = load("voc", voc_root)
    assert splits.num_classes == 20 and (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 2)
    _, target = splits.test[0]
    person, tvmonitor = files.VOC_CLASSES.index("person"), files.VOC_CLASSES.index("tvmonitor")
    expected = [[person, 0, 0, 0.5, 0.5], [tvmonitor, 10 / 40, 5 / 30, 1, 1]]
    np.testing.assert_allclose(target[:2].numpy(), expected, atol=1e-6)
    assert torch.all(target[2:] == -1)  # the difficult car is gone


def test_voc_without_a_test_list_tests_on_val(voc_root):
    (voc_root / "ImageSets/Main/test.txt").rename(voc_root / "ImageSets/Main/val.txt")
    (voc_root / "ImageSets/Main/trainval.txt").rename(voc_root / "ImageSets/Main/train.txt")
    splits = load("voc", voc_root)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 2)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        (("persn", 0, 1, 1, 5, 5), "unknown class 'persn' \\(did you mean 'person'\\?\\)"),
        (("dog", 0, 1, 1, 45, 5), "not inside its 40x30 image"),
        (("dog", 0, 9, 1, 5, 5), "ends before it starts"),
        (("dog", 0, 1, 1, "five", 5), "<xmax> is 'five', not a number"),
    ],
)
def test_voc_bad_annotations_say_what_is_wrong(voc_root, box, message):
    voc_xml(voc_root / "Annotations/000006.xml", [box])
    with pytest.raises(EdgecompError, match=message):
        load("voc", voc_root)


def test_voc_wrong_folders_say_what_is_wrong(voc_root):
    with pytest.raises(EdgecompError, match=r"point data.root at .*VOC2007"):
        load("voc", voc_root.parent)
    (voc_root / "JPEGImages/000002.jpg").unlink()
    with pytest.raises(EdgecompError, match=r"000002.jpg is missing"):
        load("voc", voc_root)
    (voc_root / "ImageSets/Main/test.txt").unlink()
    with pytest.raises(EdgecompError, match=r"no train.txt or val.txt"):
        load("voc", voc_root)
    for path in (voc_root / "ImageSets/Main").iterdir():
        path.unlink()
    (voc_root / "ImageSets/Main").rmdir()
    with pytest.raises(EdgecompError, match="no ImageSets/Main/ folder"):
        load("voc", voc_root)
