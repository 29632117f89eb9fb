"""Photos as a pretrained classifier's evaluation expects them: resize the shorter side, centre-crop, normalise.

This is torchvision's and timm's evaluation transform (``Resize(resize) + CenterCrop(size)``; ``resize =
size / crop_pct``). The work is `targets.preprocess` (numpy and Pillow, no torch, so a device reads photos the
same way); this module keeps the names callers use. ``NORMALIZE`` names the usual input conventions as
(mean, std) on [0, 1] pixels.

>>> x = read_photos(sorted(Path("photos").glob("*.jpg")), size=224, normalize="tf")  # (N, 3, 224, 224)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from targets.base import EdgecompError
from targets.preprocess import DEFAULT_CROP_PCT, NORMALIZE, Preprocess, centre_crop, read_images

__all__ = ["DEFAULT_CROP_PCT", "NORMALIZE", "centre_crop", "read_photos"]


def read_photos(
    paths: Sequence[str | Path], size: int, normalize: str = "imagenet", crop_pct: float = DEFAULT_CROP_PCT
) -> np.ndarray:
    """Float32 NCHW batch of RGB photos: shorter side to round(size / crop_pct) (bilinear), centre crop of
    `size`, then (x / 255 - mean) / std with `normalize`'s preset."""
    if normalize not in NORMALIZE:
        raise EdgecompError(f"unknown normalize {normalize!r}; known: {', '.join(NORMALIZE)}")
    mean, std = NORMALIZE[normalize]
    return read_images(paths, Preprocess((size, size), mean, std, "centre_crop", crop_pct))
