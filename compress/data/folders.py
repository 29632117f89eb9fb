"""`imagefolder`: a root with one folder per class (or train/ val/ test/ folders of those).

Images are decoded and resized to the recipe's image size once, when the set is loaded, and kept in
memory as uint8: fine for the tens of thousands of images a compression recipe on CPU uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress.data._base import DATASETS, Arrays, DataSplits, build_splits, stratified_split, with_validation
from compress.recipe import DataSpec
from targets.base import EdgecompError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _class_folders(root: Path) -> list[Path]:
    return sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))


def _read(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR)).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as error:
        raise EdgecompError(f"{path}: cannot read image ({error}); remove or replace the file") from None


def read_folder(root: Path, classes: list[str], size: int) -> Arrays:
    """All images under root/<class>/ as uint8 NCHW at size x size, with their class indices."""
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        images += [_read(path, size) for path in files]
        labels += [label] * len(files)
    if not images:
        raise EdgecompError(f"{root}: no images found (expected {root}/<class name>/<image files>)")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


@DATASETS.register("imagefolder")
def imagefolder(spec: DataSpec) -> DataSplits:
    if spec.root is None:
        raise EdgecompError("imagefolder needs data.root: a folder with one sub-folder of images per class")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise EdgecompError(f"data.root {spec.root!r}: no such folder")
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = [path.name for path in _class_folders(root / "train")]
        parts = [
            read_folder(root / part, classes, spec.image_size)
            for part in ("train", "val", "test")
            if (root / part).is_dir()
        ]
        if len(parts) == 3:
            return build_splits(spec, mean, std, *parts)
        return with_validation(spec, mean, std, parts[0], parts[1], val_size=0.1)
    classes = [path.name for path in _class_folders(root)]
    images, labels = read_folder(root, classes, spec.image_size)
    train, val, test = stratified_split(labels, val=0.1, test=0.2)
    return build_splits(spec, mean, std, *((images[index], labels[index]) for index in (train, val, test)))
