"""`digits`: scikit-learn's 1,797 real 8x8 handwritten digits, shipped inside its wheel (no download)."""

from __future__ import annotations

import numpy as np

from compress.data._base import DATASETS, DataSplits, build_splits, pool_split
from compress.schema import DataSpec

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 images scaled from sklearn's 0..16 levels to uint8 0..255, and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


@DATASETS.register("digits")
def digits(spec: DataSpec) -> DataSplits:
    images, labels = digit_images()
    train, val, test = pool_split(spec, labels)
    parts = ((images[index], labels[index]) for index in (train, val, test))
    return build_splits(spec, MEAN, STD, *parts, classes=tuple(str(digit) for digit in range(10)))
