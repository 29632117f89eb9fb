"""The machinery shared by every data set: splits, an in-memory image dataset, loaders."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset

from compress.registry import Registry
from compress.schema import DataSpec, SplitSpec
from targets.base import EdgecompError
from targets.preprocess import NORMALIZE, Preprocess

SPLIT_SEED = 20190101  # fixed: splits must not move with the recipe's training seed


@dataclass(frozen=True)
class DataSplits:
    """The splits, and how their images were made from pixels (`preprocess`: written into every exported file,
    so the device reads photos as the model saw its data)."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    preprocess: Preprocess
    task: str = "classification"  # what its labels are for: a recipe's task must match
    # False for photos without labels (`images`): the dense model's predictions become the labels
    # (`RunContext.label_by`), so every metric is agreement with it
    labelled: bool = True
    augment: str = "none"  # the training augmentation data.augment: auto means (compress.data.augment)
    # the model's classes by name, in output order, where the data names them: written into every exported file
    # (metadata "classes"), so the device's tools name what they predict
    classes: tuple[str, ...] = ()

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocess.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocess.std

    @property
    def image_size(self) -> int:
        return self.preprocess.size[0]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.preprocess.channels, *self.preprocess.size)


DATASETS: Registry[Callable[[DataSpec], DataSplits]] = Registry("data set")


class ImageArrayDataset(Dataset):
    """Images held in memory as uint8 (N, H, W) or (N, C, H, W); converted one at a time on access.

    Grey images are repeated to 3 channels so that the same ImageNet-shaped models serve every set.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, image_size: int, mean, std) -> None:
        if images.ndim == 3:
            images = images[:, None]
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8))  # a writable copy
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return normalize(self.images[index], self.image_size, self.mean, self.std), int(self.labels[index])


def normalize(image: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 CHW -> float CHW in [0, 1], resized to size x size, 3 channels, normalised."""
    x = image.float().div_(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return (x - mean) / std


def stratified_holdout(labels: np.ndarray, size: float | int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held out), stratified by label, the same on every machine and run.

    `size` is a fraction of the samples or a count, as in scikit-learn. A set that cannot be stratified (a class
    with one sample, or fewer held-out samples than classes: a few labelled photos of a pretrained model's
    classes) is split at random, with the same seed.
    """
    index = np.arange(len(labels))
    try:
        rest, held = train_test_split(index, test_size=size, stratify=labels, random_state=SPLIT_SEED)
    except ValueError:  # scikit-learn's refusal to stratify; a size it refuses fails again below
        rest, held = train_test_split(index, test_size=size, random_state=SPLIT_SEED)
    return np.sort(rest), np.sort(held)


def stratified_split(labels: np.ndarray, val: float, test: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / val / test for a set that ships without fixed splits."""
    rest, test_index = stratified_holdout(labels, test)
    train, val_index = stratified_holdout(labels[rest], val / (1 - test))
    return rest[train], rest[val_index], test_index


def pool_split(spec: DataSpec, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / val / test of a set edgecomp splits itself, by the recipe's `data.split`."""
    split = spec.split or SplitSpec()
    return stratified_split(labels, val=split.val, test=split.test)


POOLED = ("digits", "images", "imagefolder")  # the data sets edgecomp splits itself (`pool_split`): data.split


def split_refusal(spec: DataSpec, splits: str) -> str:
    """Why `data.split` does not apply to a set whose splits are not edgecomp's to choose (`splits`: what they are)."""
    return (
        f"data.split: {spec.dataset} {splits}, so there is nothing to split; data.split is for a pool of images "
        f"edgecomp splits itself ({', '.join(POOLED)}; an imagefolder without train/, val/ or test/ folders): unset it"
    )


def subset_train(dataset: Dataset, labels: np.ndarray, size: int | None) -> Dataset:
    """A stratified subset of `size` training samples (all of them when size is None or too large)."""
    if size is None or size >= len(labels):
        return dataset
    _, keep = stratified_holdout(labels, size)
    return Subset(dataset, keep.tolist())


Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images, int labels


def normalization(spec: DataSpec, mean: tuple, std: tuple) -> tuple[tuple, tuple]:
    """The (mean, std) inputs are normalised with: the recipe's `data.normalize` preset, or the data set's own."""
    return (mean, std) if spec.normalize == "dataset" else NORMALIZE[spec.normalize]


def build_splits(
    spec: DataSpec,
    mean: tuple,
    std: tuple,
    train: Arrays,
    val: Arrays,
    test: Arrays,
    augment: str = "none",
    classes: tuple[str, ...] = (),
) -> DataSplits:
    """DataSplits from in-memory arrays, with the recipe's image size and training subset applied; `augment` is
    the set's default training augmentation, `classes` its class names."""

    mean, std = normalization(spec, mean, std)
    grey = train[0].ndim == 3 or train[0].shape[1] == 1  # (N, H, W) or (N, 1, H, W): repeated to 3 channels
    preprocess = Preprocess((spec.image_size,) * 2, mean, std, colour="grey" if grey else "RGB")
    if spec.crop_pct is not None:
        raise EdgecompError(
            f"data.crop_pct is for photo folders (imagefolder); {spec.dataset}'s images are already square: unset it"
        )

    def part(arrays: Arrays) -> ImageArrayDataset:
        return ImageArrayDataset(arrays[0], arrays[1], spec.image_size, mean, std)

    return DataSplits(
        train=subset_train(part(train), train[1], spec.train_subset),
        val=part(val),
        test=part(test),
        num_classes=int(max(train[1].max(), test[1].max())) + 1,
        preprocess=preprocess,
        augment=augment,
        classes=classes,
    )


def with_validation(
    spec: DataSpec,
    mean: tuple,
    std: tuple,
    train: Arrays,
    test: Arrays,
    val_size: int,
    augment: str = "none",
    classes: tuple[str, ...] = (),
) -> DataSplits:
    """Splits for a set with an official test split: validation is carved from the training split."""
    rest, val = stratified_holdout(train[1], val_size)
    parts = (train[0][rest], train[1][rest]), (train[0][val], train[1][val]), test
    return build_splits(spec, mean, std, *parts, augment=augment, classes=classes)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, sampler: list[int] | None = None
) -> DataLoader:
    """Batches in order, in a seeded shuffle, or in the order of `sampler` (a worker's shard of an epoch)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, sampler=sampler)


def as_numpy(dataset: Dataset, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (float32 NCHW images, int labels) for the runtimes, which take numpy."""
    for x, y in make_loader(dataset, batch_size):
        yield x.numpy(), y.numpy()
