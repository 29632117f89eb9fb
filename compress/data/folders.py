"""`imagefolder`: a root with one folder per class (or train/ val/ test/ folders of those).

Images are decoded when a batch needs them (so ImageNet-sized folders work), resized to the recipe's
square image size (or, with `data.crop_pct`, resized on the shorter side and centre-cropped) and normalised
with ImageNet's statistics or the recipe's `data.normalize` preset. Every file's header is checked when the
set is opened, so a file that is not an image fails the run at once, not hours into training.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from compress.data._base import (
    DATASETS,
    DataSplits,
    normalization,
    normalize,
    pool_split,
    split_refusal,
    stratified_holdout,
    subset_train,
)
from compress.data.class_names import class_names
from compress.schema import DataSpec
from targets.base import EdgecompError
from targets.preprocess import Preprocess, channels_first, resized

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")  # an imagefolder root may hold these, each with class folders
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as error:
        raise EdgecompError(f"{path}: cannot read image ({error}); remove or replace the file") from None


class ImageFileDataset(Dataset):
    """(path, label) pairs, decoded on access as `preprocess` says (`targets.preprocess.resized`: squashed to
    size, or resized on the shorter side and centre-cropped), normalised with its mean/std."""

    def __init__(self, files: list[Path], labels: np.ndarray, preprocess: Preprocess) -> None:
        self.files = files
        self.labels = labels
        self.preprocess = preprocess
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            with _open(self.files[index]) as image:
                pixels = resized(image, self.preprocess)
        except OSError as error:  # truncated data shows only on decode
            raise EdgecompError(f"{self.files[index]}: cannot decode image ({error})") from None
        chw = torch.from_numpy(channels_first(pixels, self.preprocess.channels).copy())
        return normalize(chw, self.preprocess.size[0], self.mean, self.std), int(self.labels[index])

    def subset(self, index: np.ndarray) -> ImageFileDataset:
        return ImageFileDataset([self.files[i] for i in index], self.labels[index], self.preprocess)


def scan(root: Path, labels: Mapping[str, int], spec: DataSpec) -> ImageFileDataset:
    """Every image under root/<folder>/ (recursively), header-checked, labelled as `labels` maps its folder (a
    folder of another split that this one lacks is skipped)."""
    files, found = [], []
    for name, label in labels.items():
        folder = root / name
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for path in images:
            _open(path).close()
        files += images
        found += [label] * len(images)
    if not files:
        raise EdgecompError(f"{root}: no images found (expected {root}/<class name>/<image files>)")
    return ImageFileDataset(files, np.asarray(found, dtype=np.int64), photo_preprocess(spec))


def photo_preprocess(spec: DataSpec) -> Preprocess:
    """An imagefolder's preprocessing: ImageNet statistics or the recipe's `data.normalize`; squashed to the
    square image size, or with `data.crop_pct` resized on the shorter side and centre-cropped."""
    mean, std = normalization(spec, IMAGENET_MEAN, IMAGENET_STD)
    resize = "squash" if spec.crop_pct is None else "centre_crop"
    return Preprocess((spec.image_size,) * 2, mean, std, resize, spec.crop_pct)


def _folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_labels(spec: DataSpec, folders: list[str], root: Path) -> tuple[dict[str, int], tuple[str, ...]]:
    """Class folder -> label, and the model's classes by name, as `data.labels` says (`compress.data.class_names`)."""
    names = class_names(spec.labels)
    if names is not None:
        return names.labels(folders), names.display
    if set(folders) <= set(SPLITS) and len(folders) > 1:
        raise EdgecompError(
            f"{root} holds {' and '.join(f + '/' for f in folders)} but no train/: give train/ (calibration and "
            "training images) beside val/ or test/, or point data.root at one folder of class folders"
        )
    return {folder: label for label, folder in enumerate(folders)}, tuple(folders)


def _splits(
    spec: DataSpec, train: ImageFileDataset, val: ImageFileDataset, test: ImageFileDataset, classes: tuple[str, ...]
) -> DataSplits:
    return DataSplits(
        train=subset_train(train, train.labels, spec.train_subset),
        val=val,
        test=test,
        num_classes=len(classes),
        preprocess=train.preprocess,
        augment="photo",
        classes=classes,
    )


NO_LABEL = -100  # what an unlabelled image holds until the dense model labels it (cross-entropy ignores it)


@DATASETS.register("images")
def images(spec: DataSpec) -> DataSplits:
    """A folder of photos without classes (searched recursively): calibration images, the training set of a
    distillation (`alpha: 1` needs no labels), and a test set whose metric is top-1 agreement with the dense
    fp32 model, which labels every image before anything else uses them (`RunContext.label_by`)."""
    if spec.root is None:
        raise EdgecompError("images needs data.root: a folder of photos (no classes needed)")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise EdgecompError(f"data.root {spec.root!r}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 10:
        raise EdgecompError(f"{root}: {len(files)} image(s) found; images needs at least 10 to split")
    for path in files:
        _open(path).close()
    everything = ImageFileDataset(files, np.full(len(files), NO_LABEL, np.int64), photo_preprocess(spec))
    train, val, test = pool_split(spec, np.zeros(len(files), np.int64))
    if spec.train_subset is not None:
        train = train[: spec.train_subset]
    return DataSplits(
        train=everything.subset(train),
        val=everything.subset(val),
        test=everything.subset(test),
        num_classes=0,  # the model's: model.num_classes
        preprocess=everything.preprocess,
        labelled=False,
        augment="photo",
    )


@DATASETS.register("imagefolder")
def imagefolder(spec: DataSpec) -> DataSplits:
    if spec.root is None:
        raise EdgecompError("imagefolder needs data.root: a folder with one sub-folder of images per class")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise EdgecompError(f"data.root {spec.root!r}: no such folder")
    folders = _folders(root)
    if len(folders) == 1 and folders[0] in SPLITS:  # one split's folder alone (ImageNet's val/): the whole set
        root, folders = root / folders[0], _folders(root / folders[0])
    if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        if spec.split is not None:  # the one set whose splits depend on its files, so refused here, not at load
            raise EdgecompError(split_refusal(spec, f"has its own split folders in {root}"))
        parts = {split: root / split for split in SPLITS if (root / split).is_dir()}
        labels, classes = _class_labels(spec, sorted({f for part in parts.values() for f in _folders(part)}), root)
        scanned = {split: scan(folder, labels, spec) for split, folder in parts.items()}
        train = scanned["train"]
        if "val" in scanned and "test" in scanned:
            return _splits(spec, train, scanned["val"], scanned["test"], classes)
        rest, val = stratified_holdout(train.labels, 0.1)
        return _splits(spec, train.subset(rest), train.subset(val), scanned.get("test", scanned.get("val")), classes)
    labels, classes = _class_labels(spec, folders, root)
    everything = scan(root, labels, spec)
    train, val, test = pool_split(spec, everything.labels)
    return _splits(spec, everything.subset(train), everything.subset(val), everything.subset(test), classes)
