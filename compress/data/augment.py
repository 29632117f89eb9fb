"""Training-time augmentation, applied to whole batches in `train.fit` (never to val, test or calibration).

Two presets, after torchvision's reference recipes (`references/classification/presets.py`) and the usual
CIFAR one:

- ``photo``: random-resized crop (area 8-100%, aspect 3/4-4/3) + horizontal flip, for photo folders;
- ``pad_crop``: pad by image_size / 8 (4 px at 32 px) + random crop back + horizontal flip, for small
  centred arrays (CIFAR-10, Fashion-MNIST).

Both are one affine warp per image (`F.affine_grid` + `F.grid_sample` over the batch), applied to the
dataset's already resized and normalised tensors, so the padding is the data set's mean colour (0 after
normalisation) and a crop is resampled from the image at its training size. Every random draw is a hash
of (seed, epoch, sample index): a sample's augmentation in an epoch is the same however the epoch is
split into batches or shared among workers, and no worker's RNG state is involved.

>>> augment = Augmentation("pad_crop", seed=0)
>>> x = augment(batch, index=torch.tensor([3, 17]), epoch=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from compress.data._base import DataSplits
from targets.base import EdgecompError

AUGMENTATIONS = ("none", "photo", "pad_crop")
CROP_AREA = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea and Flood's SplitMix64 finaliser, on uint64 arrays (array arithmetic wraps silently)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, index: np.ndarray, draws: int) -> np.ndarray:
    """[len(index), draws] floats in [0, 1), each a function of (seed, epoch, sample index, draw) alone."""
    key = _splitmix64(_splitmix64(np.array([seed], np.uint64)) ^ np.array([epoch], np.uint64))
    counters = np.asarray(index, np.uint64)[:, None] * np.uint64(draws) + np.arange(draws, dtype=np.uint64)
    bits = _splitmix64(_splitmix64(counters ^ key))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class Augmentation:
    """A preset (one of AUGMENTATIONS) and the seed its draws come from; ``none`` returns the batch as is."""

    kind: str
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.kind!r}; known: {', '.join(AUGMENTATIONS)}")

    def __call__(self, x: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The batch `x` (N, C, H, W) of samples `index` (their indices in the training set), augmented."""
        if self.kind == "none":
            return x
        u = uniforms(self.seed, epoch, index.cpu().numpy(), 5)
        theta = _photo(u) if self.kind == "photo" else _pad_crop(u, x.shape[-1], x.shape[-2])
        grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
        mode = "bilinear" if self.kind == "photo" else "nearest"  # whole-pixel shifts stay exact
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _flip(u: np.ndarray) -> np.ndarray:
    return np.where(u < 0.5, -1.0, 1.0)


def _photo(u: np.ndarray) -> torch.Tensor:
    """Affine maps (output -> input, normalised coordinates) of random-resized crops, flipped half the time.
    A crop wider or taller than the image is clipped to it (torchvision retries, then takes the centre)."""
    area = CROP_AREA[0] + u[:, 0] * (CROP_AREA[1] - CROP_AREA[0])
    ratio = np.exp(math.log(CROP_RATIO[0]) + u[:, 1] * (math.log(CROP_RATIO[1]) - math.log(CROP_RATIO[0])))
    width, height = np.minimum(np.sqrt(area * ratio), 1.0), np.minimum(np.sqrt(area / ratio), 1.0)
    cx, cy = (2 * u[:, 2] - 1) * (1 - width), (2 * u[:, 3] - 1) * (1 - height)
    return _theta(width * _flip(u[:, 4]), height, cx, cy)


def _pad_crop(u: np.ndarray, width: int, height: int) -> torch.Tensor:
    """Whole-pixel shifts of up to size / 8 each way (pad + random crop), flipped half the time."""
    pad_x, pad_y = max(1, round(width / 8)), max(1, round(height / 8))
    dx = np.floor(u[:, 2] * (2 * pad_x + 1)) - pad_x
    dy = np.floor(u[:, 3] * (2 * pad_y + 1)) - pad_y
    ones = np.ones(len(u))
    return _theta(_flip(u[:, 4]), ones, 2 * dx / width, 2 * dy / height)


def _theta(sx: np.ndarray, sy: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> torch.Tensor:
    zeros = np.zeros_like(sx)
    rows = np.stack([np.stack([sx, zeros, tx], 1), np.stack([zeros, sy, ty], 1)], 1)
    return torch.from_numpy(rows.astype(np.float32))


def resolve(requested: str, splits: DataSplits) -> str:
    """The augmentation a run trains with: `data.augment`, where ``auto`` is the data set's own default."""
    if requested == "auto":
        return splits.augment
    if requested != "none" and splits.task != "classification":
        raise EdgecompError(
            f"data.augment: {requested} moves and flips the image, and {splits.task} labels (boxes) would have "
            "to move with it, which edgecomp does not do; use none"
        )
    return requested
