"""`imagefolder`: a root with one folder per class (or train/ val/ test/ folders of those).

Images are decoded when a batch needs them (so ImageNet-sized folders work), resized to the recipe's
square image size (or, with `data.crop_pct`, resized on the shorter side and centre-cropped) and normalised
with ImageNet's statistics or the recipe's `data.normalize` preset. Every file's header is checked when the
set is opened, so a file that is not an image fails the run at once, not hours into training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from compress.data._base import (
    DATASETS,
    DataSplits,
    normalization,
    normalize,
    stratified_holdout,
    stratified_split,
    subset_train,
)
from compress.data.photos import centre_crop
from compress.schema import DataSpec
from targets.base import EdgecompError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as error:
        raise EdgecompError(f"{path}: cannot read image ({error}); remove or replace the file") from None


class ImageFileDataset(Dataset):
    """(path, label) pairs, decoded on access to RGB at size x size: squashed, or with `crop_pct` resized on
    the shorter side and centre-cropped (`compress.data.photos.centre_crop`); normalised with mean/std."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray,
        image_size: int,
        mean: tuple = IMAGENET_MEAN,
        std: tuple = IMAGENET_STD,
        crop_pct: float | None = None,
    ) -> None:
        self.files = files
        self.labels = labels
        self.image_size = image_size
        self.stats = (tuple(mean), tuple(std))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.crop_pct = crop_pct

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        try:
            with _open(self.files[index]) as image:
                if self.crop_pct is None:
                    rgb = np.asarray(image.convert("RGB").resize((self.image_size,) * 2, Image.BILINEAR))
                else:
                    rgb = centre_crop(image.convert("RGB"), self.image_size, self.crop_pct)
        except OSError as error:  # truncated data shows only on decode
            raise EdgecompError(f"{self.files[index]}: cannot decode image ({error})") from None
        chw = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
        return normalize(chw, self.image_size, self.mean, self.std), int(self.labels[index])

    def subset(self, index: np.ndarray) -> ImageFileDataset:
        files = [self.files[i] for i in index]
        return ImageFileDataset(files, self.labels[index], self.image_size, *self.stats, self.crop_pct)


def scan(root: Path, classes: list[str], spec: DataSpec) -> ImageFileDataset:
    """Every image under root/<class>/ (recursively), header-checked, with its class index."""
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for path in found:
            _open(path).close()
        files += found
        labels += [label] * len(found)
    if not files:
        raise EdgecompError(f"{root}: no images found (expected {root}/<class name>/<image files>)")
    mean, std = normalization(spec, IMAGENET_MEAN, IMAGENET_STD)
    return ImageFileDataset(files, np.asarray(labels, dtype=np.int64), spec.image_size, mean, std, spec.crop_pct)


def _classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _splits(spec: DataSpec, train: ImageFileDataset, val: ImageFileDataset, test: ImageFileDataset) -> DataSplits:
    return DataSplits(
        train=subset_train(train, train.labels, spec.train_subset),
        val=val,
        test=test,
        num_classes=int(max(train.labels.max(), test.labels.max())) + 1,
        mean=train.stats[0],
        std=train.stats[1],
        image_size=spec.image_size,
        augment="photo",
    )


@DATASETS.register("imagefolder")
def imagefolder(spec: DataSpec) -> DataSplits:
    if spec.root is None:
        raise EdgecompError("imagefolder needs data.root: a folder with one sub-folder of images per class")
    root = Path(spec.root).expanduser()
    if not root.is_dir():
        raise EdgecompError(f"data.root {spec.root!r}: no such folder")
    if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        classes = _classes(root / "train")
        train = scan(root / "train", classes, spec)
        if (root / "val").is_dir() and (root / "test").is_dir():
            return _splits(spec, train, scan(root / "val", classes, spec), scan(root / "test", classes, spec))
        test = scan(root / ("test" if (root / "test").is_dir() else "val"), classes, spec)
        rest, val = stratified_holdout(train.labels, 0.1)
        return _splits(spec, train.subset(rest), train.subset(val), test)
    everything = scan(root, _classes(root), spec)
    train, val, test = stratified_split(everything.labels, val=0.1, test=0.2)
    return _splits(spec, everything.subset(train), everything.subset(val), everything.subset(test))
