"""Photos as a pretrained classifier's evaluation expects them: resize the shorter side, centre-crop, normalise.

This is torchvision's and timm's evaluation transform (``Resize(resize) + CenterCrop(size)``; ``resize =
size / crop_pct``), done with Pillow and numpy so that calibration and agreement checks on real photos need
no dataset class. ``NORMALIZE`` names the usual input conventions as (mean, std) on [0, 1] pixels.

>>> x = read_photos(sorted(Path("photos").glob("*.jpg")), size=224, normalize="tf")  # (N, 3, 224, 224)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from targets.base import EdgecompError

NORMALIZE: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision / timm weights
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]: TF-slim and Keras MobileNets
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0, 1]
}
DEFAULT_CROP_PCT = 0.875  # 224 of 256, the ImageNet convention


def read_photos(
    paths: Sequence[str | Path], size: int, normalize: str = "imagenet", crop_pct: float = DEFAULT_CROP_PCT
) -> np.ndarray:
    """Float32 NCHW batch of RGB photos: shorter side to round(size / crop_pct) (bilinear), centre crop of
    `size`, then (x / 255 - mean) / std with `normalize`'s preset."""
    if normalize not in NORMALIZE:
        raise EdgecompError(f"unknown normalize {normalize!r}; known: {', '.join(NORMALIZE)}")
    mean, std = (np.array(v, np.float32).reshape(3, 1, 1) for v in NORMALIZE[normalize])
    batch = np.empty((len(paths), 3, size, size), np.float32)
    for i, path in enumerate(paths):
        try:
            from PIL import Image

            with Image.open(path) as image:
                pixels = centre_crop(image.convert("RGB"), size, crop_pct)
        except OSError as e:
            raise EdgecompError(f"{path}: not an image Pillow can read ({e})") from e
        batch[i] = (pixels.transpose(2, 0, 1).astype(np.float32) / 255 - mean) / std
    return batch


def centre_crop(image: Any, size: int, crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """A Pillow RGB image's uint8 HWC pixels: shorter side to round(size / crop_pct) (bilinear), centre crop
    of `size` x `size`."""
    from PIL import Image

    resize = round(size / crop_pct)
    scale = resize / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)
