"""`coco` and `voc`: detection sets read from a folder (data.root), and the target layout every detection set shares.

A detection sample is `(image, target)`: the image as the classification sets give it (float32 [3, S, S],
resized to S x S without keeping the aspect ratio, normalised with the set's statistics or `data.normalize`'s
preset), and the target as float32 [M, 5], one row `(class, x1, y1, x2, y2)` per object with the box in [0, 1]
of the image (x right, y down), rows past the image's objects all -1. M is fixed per set so that torch's default
collate stacks a batch, and a split's targets concatenate to [N, M, 5], without a custom collate function in
every loop that reads them. A COCO file's category ids become classes as `data.labels` says
(`compress.data.categories`): contiguous, or coco91 for torchvision's COCO detectors as they are.

Box coordinates are continuous pixel edges: pixel i spans [i, i + 1), so a box over pixel columns 0..9 of
a 100-pixel-wide image is x1 = 0, x2 = 0.1. COCO's `[x, y, w, h]` already means that; VOC's 1-based
inclusive pixel indices become `[xmin - 1, xmax]`. A box may stick out of its image by up to
`EDGE_TOLERANCE_PX` (rounding in the annotation tools) and is clipped; further out is an error.

An image with more than `MAX_BOXES` objects keeps the largest ones, and the loader warns once with the
count: refusing the data set for one crowded picture would be worse than losing its smallest boxes, and
the standard sets stay below the limit.

Images are decoded when a batch needs them (COCO's 118k images do not fit in memory); opening the set
checks that every annotation parses and every image file exists, so a mistake fails the run at once.
The splits are fixed: the official validation split is the test split (COCO's and VOC 2012's test labels
are not public) and the validation split is a fixed random part of the training split.
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from compress.data._base import DATASETS, SPLIT_SEED, DataSplits, normalization, normalize
from compress.data.categories import CategoryMap, category_map
from compress.data.folders import IMAGENET_MEAN, IMAGENET_STD, _open
from compress.schema import DataSpec
from targets.base import EdgecompError, did_you_mean
from targets.preprocess import Preprocess

MAX_BOXES = 100  # M for the sets read from files
EDGE_TOLERANCE_PX = 1.0
VAL_FRACTION, VAL_MAX_IMAGES = 0.1, 5000  # the validation split carved from the training split
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def pad_targets(rows: np.ndarray, max_boxes: int) -> np.ndarray:
    """[k, 5] object rows -> [max_boxes, 5] float32, the rows past k all -1."""
    target = np.full((max_boxes, 5), -1.0, dtype=np.float32)
    target[: len(rows)] = rows
    return target


def random_subset(dataset: Dataset, size: int | None) -> Dataset:
    """A fixed random subset of `size` training images (all when size is None or too large).

    Not stratified: an image holds several classes. The same images on every machine and run.
    """
    if size is None or size >= len(dataset):
        return dataset
    keep = np.sort(np.random.default_rng(SPLIT_SEED).permutation(len(dataset))[:size])
    return Subset(dataset, keep.tolist())


def carve_validation(count: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, validation) of a training split, fixed for every run and machine."""
    if count < 2:
        raise EdgecompError(f"{where}: {count} training image(s); a validation split needs at least 2")
    order = np.random.default_rng(SPLIT_SEED).permutation(count)
    size = min(VAL_MAX_IMAGES, max(1, round(count * VAL_FRACTION)))
    return np.sort(order[size:]), np.sort(order[:size])


def detection_splits(
    spec: DataSpec,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    num_classes: int,
    mean: tuple,
    std: tuple,
    classes: tuple[str, ...] = (),
) -> DataSplits:
    """Detection splits; their images are squashed to the square image size (boxes stay relative to it) and
    normalised with `mean`/`std`, which the datasets themselves apply."""
    return DataSplits(
        train=random_subset(train, spec.train_subset),
        val=val,
        test=test,
        num_classes=num_classes,
        preprocess=Preprocess((spec.image_size,) * 2, mean, std),
        task="detection",
        classes=classes,
    )


class AnnotatedImages:
    """What a parsed annotation file holds: image files, their annotated sizes and object rows.

    Rows are built through `add`, which checks each box and keeps count of what it had to drop, so that
    a whole file warns once rather than once per image.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.files: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self.rows: list[np.ndarray] = []
        self.crowded = self.empty_boxes = 0

    def add(self, file: Path, size: tuple[int, int], objects: list[tuple[int, float, float, float, float]]) -> None:
        """One image: (class, x1, y1, x2, y2) boxes in pixel edges, checked, normalised and capped at MAX_BOXES."""
        boxes = [box for obj in objects if (box := self._normalised(obj, size, file)) is not None]
        rows = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
        if len(rows) > MAX_BOXES:
            self.crowded += 1
            area = (rows[:, 3] - rows[:, 1]) * (rows[:, 4] - rows[:, 2])
            rows = rows[np.sort(np.argsort(-area, kind="stable")[:MAX_BOXES])]
        self.files.append(file)
        self.sizes.append(size)
        self.rows.append(rows)

    def _normalised(self, obj: tuple, size: tuple[int, int], file: Path) -> tuple | None:
        label, x1, y1, x2, y2 = obj
        width, height = size
        tol = EDGE_TOLERANCE_PX
        where = f"{self.source}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) of {file.name}"
        if x2 < x1 or y2 < y1:
            raise EdgecompError(f"{where} ends before it starts; fix or remove that annotation")
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            raise EdgecompError(f"{where} is not inside its {width}x{height} image; fix or remove that annotation")
        box = np.clip(np.array([x1 / width, y1 / height, x2 / width, y2 / height], dtype=np.float32), 0.0, 1.0)
        if box[2] <= box[0] or box[3] <= box[1]:  # zero-area boxes exist in real COCO files
            self.empty_boxes += 1
            return None
        return (label, *box.tolist())

    def warn_dropped(self) -> None:
        notes = []
        if self.crowded:
            notes.append(f"{self.crowded} image(s) have more than {MAX_BOXES} objects; kept the {MAX_BOXES} largest")
        if self.empty_boxes:
            notes.append(f"dropped {self.empty_boxes} zero-area box(es)")
        if notes:
            warnings.warn(f"{self.source}: {'; '.join(notes)}", stacklevel=2)

    def check_files_exist(self) -> None:
        for file in self.files:
            if not file.is_file():
                raise EdgecompError(f"{self.source}: image {file} is missing; restore it or remove its annotation")

    def dataset(self, spec: DataSpec, index: Sequence[int] | None = None) -> DetectionFileDataset:
        index = range(len(self.files)) if index is None else index
        picked = ([self.files[i] for i in index], [self.sizes[i] for i in index], [self.rows[i] for i in index])
        return DetectionFileDataset(*picked, spec.image_size, normalization(spec, IMAGENET_MEAN, IMAGENET_STD))


class DetectionFileDataset(Dataset):
    """Image files with their object rows; decoded on access to RGB at size x size, normalised with `stats`
    (mean, std: ImageNet's unless `data.normalize` says otherwise; torchvision's COCO SSDLite wants tf's [-1, 1])."""

    def __init__(
        self,
        files: list[Path],
        sizes: list[tuple[int, int]],
        rows: list[np.ndarray],
        image_size: int,
        stats: tuple[tuple, tuple],
    ) -> None:
        self.files, self.sizes, self.rows = files, sizes, rows
        self.image_size = image_size
        self.mean = torch.tensor(stats[0], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(stats[1], dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        chw = torch.from_numpy(self._decode(index))
        target = torch.from_numpy(pad_targets(self.rows[index], MAX_BOXES))
        return normalize(chw, self.image_size, self.mean, self.std), target

    def _decode(self, index: int) -> np.ndarray:
        """uint8 CHW at size x size; an image whose size is not the annotated one would misplace every box."""
        from PIL import Image

        path, size = self.files[index], self.sizes[index]
        try:
            with _open(path) as image:
                if image.size != size:
                    raise EdgecompError(
                        f"{path}: image is {image.size[0]}x{image.size[1]} but its annotation says "
                        f"{size[0]}x{size[1]}; fix the annotation or the image"
                    )
                rgb = image.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
        except OSError as error:  # truncated data shows only on decode
            raise EdgecompError(f"{path}: cannot decode image ({error}); remove or replace the file") from None
        return np.asarray(rgb).transpose(2, 0, 1).copy()


def _root(spec: DataSpec, name: str, layout: str) -> Path:
    if spec.root is None:
        raise EdgecompError(f"{name} needs data.root: {layout}")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise EdgecompError(f"data.root {spec.root!r}: no such folder ({name} expects {layout})")
    return root


# ---- COCO ---------------------------------------------------------------------------------------------------

COCO_LAYOUT = "a folder with annotations/instances_<split>.json and the images in <split>/ or images/<split>/"


def _coco_pair(root: Path) -> tuple[Path, Path]:
    """The train and val annotation files: instances_train*.json and instances_val*.json, one of each."""
    folder = root / "annotations"
    found = sorted(folder.glob("instances_*.json")) if folder.is_dir() else []
    pair = [[p for p in found if p.stem.removeprefix("instances_").startswith(kind)] for kind in ("train", "val")]
    if any(len(files) != 1 for files in pair):
        names = ", ".join(p.name for p in found) or "none"
        raise EdgecompError(
            f"{folder}: expected one instances_train*.json and one instances_val*.json (found: {names}); "
            f"data.root must be {COCO_LAYOUT}"
        )
    return pair[0][0], pair[1][0]


def _coco_images_folder(root: Path, annotation: Path) -> Path:
    split = annotation.stem.removeprefix("instances_")
    for folder in (root / split, root / "images" / split):
        if folder.is_dir():
            return folder
    raise EdgecompError(f"{annotation.name}: no image folder {root / split} or {root / 'images' / split}")


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as error:
        raise EdgecompError(f"{path}: cannot read JSON ({error})") from None
    if not isinstance(data, dict) or not all(key in data for key in ("images", "annotations", "categories")):
        raise EdgecompError(f"{path}: not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    return data


def _coco_objects(data: dict, classes: Mapping[int, int], path: Path) -> dict[int, list]:
    """Image id -> [(class, x1, y1, x2, y2)] in pixels; crowd regions dropped (they mark a blob, not objects)."""
    objects: dict[int, list] = {}
    for annotation in data["annotations"]:
        if annotation.get("iscrowd", 0):
            continue
        category = annotation["category_id"]
        if category not in classes:
            raise EdgecompError(f"{path}: annotation {annotation.get('id')} has unknown category_id {category}")
        x, y, w, h = (float(v) for v in annotation["bbox"])
        objects.setdefault(annotation["image_id"], []).append((classes[category], x, y, x + w, y + h))
    return objects


def _coco_split(root: Path, path: Path, data: dict, classes: Mapping[int, int]) -> AnnotatedImages:
    folder = _coco_images_folder(root, path)
    parsed = AnnotatedImages(path.name)
    try:
        objects = _coco_objects(data, classes, path)
        for image in sorted(data["images"], key=lambda image: image["id"]):
            size = (int(image["width"]), int(image["height"]))
            parsed.add(folder / image["file_name"], size, objects.pop(image["id"], []))
    except (KeyError, TypeError, ValueError) as error:
        raise EdgecompError(f"{path}: malformed COCO entry ({type(error).__name__}: {error})") from None
    if objects:
        raise EdgecompError(f"{path}: annotations refer to image ids not in 'images' (e.g. {next(iter(objects))})")
    parsed.check_files_exist()
    parsed.warn_dropped()
    return parsed


def _coco_classes(train: dict, test: dict, paths: tuple[Path, Path], scheme: str) -> CategoryMap:
    """COCO category id -> class index under `data.labels` (`compress.data.categories`): contiguous 0..C-1 in
    sorted id order (COCO's ids have gaps), or coco91's id - 1 (torchvision's COCO output slots)."""
    try:
        listed = [{int(c["id"]): str(c.get("name", "")) for c in data["categories"]} for data in (train, test)]
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise EdgecompError(f"{paths[0].name} or {paths[1].name}: malformed 'categories' ({error})") from None
    if sorted(listed[0]) != sorted(listed[1]) or not listed[0]:
        raise EdgecompError(f"{paths[0].name} and {paths[1].name} must list the same, non-empty categories")
    return category_map(listed[0], scheme, paths[0])


def _with_validation(
    spec: DataSpec, train: AnnotatedImages, test: AnnotatedImages, classes: tuple[str, ...], source: str
) -> DataSplits:
    """Splits of a file set with labelled train and test splits: validation is carved out of the training images."""
    rest, val = carve_validation(len(train.files), source)
    return detection_splits(
        spec,
        train.dataset(spec, rest),
        train.dataset(spec, val),
        test.dataset(spec),
        len(classes),
        *normalization(spec, IMAGENET_MEAN, IMAGENET_STD),
        classes,
    )


@DATASETS.register("coco")
def coco(spec: DataSpec) -> DataSplits:
    """COCO-format detection: train2017 (less a fixed validation part) to train, val2017 to test; the classes are
    the category ids as `data.labels` maps them (contiguous, or coco91 for torchvision's COCO detectors).

    Example: `data: {dataset: coco, root: ~/data/coco, image_size: 320}`.
    """
    root = _root(spec, "coco", COCO_LAYOUT)
    paths = _coco_pair(root)
    train_json, test_json = (_read_json(path) for path in paths)
    categories = _coco_classes(train_json, test_json, paths, spec.labels)
    train, test = (
        _coco_split(root, p, data, categories.classes) for p, data in zip(paths, (train_json, test_json), strict=True)
    )
    return _with_validation(spec, train, test, categories.names, paths[0].name)


# ---- Pascal VOC ---------------------------------------------------------------------------------------------

VOC_LAYOUT = "a VOCdevkit/VOC2007 (or VOC2012) folder with Annotations/, JPEGImages/ and ImageSets/Main/"


def _voc_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _voc_number(node: ElementTree.Element, tag: str, path: Path) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise EdgecompError(f"{path}: <{tag}> is {text!r}, not a number") from None


def _voc_object(node: ElementTree.Element, path: Path) -> tuple | None:
    """(class, x1, y1, x2, y2) in pixel edges, or None for a `difficult` object.

    Difficult objects are dropped as in VOC's own evaluation, where they count neither as hits nor misses;
    with a plain mAP they would only be misses that no one can see.
    """
    name = (node.findtext("name") or "").strip()
    if name not in VOC_CLASSES:
        raise EdgecompError(f"{path}: unknown class {name!r}{did_you_mean(name, VOC_CLASSES)}; VOC has {VOC_CLASSES}")
    if node.findtext("difficult", "0").strip() == "1":
        return None
    box = node.find("bndbox")
    if box is None:
        raise EdgecompError(f"{path}: object {name!r} has no <bndbox>")
    xmin, ymin, xmax, ymax = (_voc_number(box, tag, path) for tag in ("xmin", "ymin", "xmax", "ymax"))
    return (VOC_CLASSES.index(name), xmin - 1, ymin - 1, xmax, ymax)  # 1-based inclusive -> pixel edges


def _voc_image(root: Path, image_id: str, parsed: AnnotatedImages) -> None:
    path = root / "Annotations" / f"{image_id}.xml"
    try:
        tree = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as error:
        raise EdgecompError(f"{path}: cannot read the annotation ({error})") from None
    size = tree.find("size")
    if size is None:
        raise EdgecompError(f"{path}: no <size>; VOC annotations give the image's width and height")
    width, height = (int(_voc_number(size, tag, path)) for tag in ("width", "height"))
    objects = [obj for node in tree.iter("object") if (obj := _voc_object(node, path)) is not None]
    parsed.add(root / "JPEGImages" / f"{image_id}.jpg", (width, height), objects)


def _voc_split(root: Path, split: str) -> AnnotatedImages:
    parsed = AnnotatedImages(f"{root.name} {split}")
    for image_id in _voc_ids(root, split):
        _voc_image(root, image_id, parsed)
    parsed.check_files_exist()
    parsed.warn_dropped()
    return parsed


def _voc_check(root: Path) -> None:
    nested = sorted(p.name for p in root.glob("VOC20*") if p.is_dir())
    if nested:
        raise EdgecompError(f"data.root {root} holds {', '.join(nested)}: point data.root at {root / nested[0]}")
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        if not (root / folder).is_dir():
            raise EdgecompError(f"data.root {root}: no {folder}/ folder; data.root must be {VOC_LAYOUT}")


@DATASETS.register("voc")
def voc(spec: DataSpec) -> DataSplits:
    """Pascal VOC: trainval to train and test to test where test.txt exists (VOC 2007), else train and val.

    A fixed tenth of the training images is the validation split. Example:
    `data: {dataset: voc, root: ~/data/VOCdevkit/VOC2007, image_size: 320}`.
    """
    root = _root(spec, "voc", VOC_LAYOUT)
    _voc_check(root)
    main = root / "ImageSets" / "Main"
    names = ("trainval", "test") if (main / "test.txt").is_file() else ("train", "val")
    missing = [f"{name}.txt" for name in names if not (main / f"{name}.txt").is_file()]
    if missing:
        raise EdgecompError(f"{main}: no {' or '.join(missing)}; VOC lists each split's image ids there")
    train, test = (_voc_split(root, name) for name in names)
    return _with_validation(spec, train, test, VOC_CLASSES, f"{root.name} {names[0]}")
