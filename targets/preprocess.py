"""How an image becomes a model's input, as data: size, layout, mean/std, colour order, resize.

A model carries its input convention (timm's ``pretrained_cfg``): edgecomp writes the `Preprocess` its data
set fed the model into every exported file's metadata (key ``preprocess``, one JSON string, since every
target's metadata is str -> str), and the device-side tools read it back (``python -m targets.predict FILE
--images DIR``), so a photo reaches the file as it reached the model in training and measurement.

Imports numpy only; Pillow is imported by the functions that read images (a device may lack it).

>>> p = Preprocess((224, 224), mean=(0.5,) * 3, std=(0.5,) * 3, resize="centre_crop", crop_pct=0.875)
>>> x = read_images(sorted(Path("photos").glob("*.jpg")), p)  # float32 (N, 3, 224, 224)
>>> Preprocess.from_metadata(targets.get_target("tflite").read_metadata("model.tflite"))
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from targets.base import EdgecompError

METADATA_KEY = "preprocess"
NORMALIZE: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision / timm weights
    "tf": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]: TF-slim and Keras MobileNets
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0, 1]
}
DEFAULT_CROP_PCT = 0.875  # 224 of 256, the ImageNet convention
RESIZES = ("squash", "centre_crop")
COLOURS = ("RGB", "grey")


@dataclass(frozen=True)
class Preprocess:
    """What a model's input is, from an image file: resized to `size` (H, W), then per channel
    ``(pixel / 255 - mean) / std``, channels in `colour` order, batches in `layout`.

    `resize`: "squash" resizes to `size` without keeping the aspect ratio (what the small square data sets
    and detection sets do); "centre_crop" scales the image to cover ``size / crop_pct`` and crops the centre
    `size` (torchvision's and timm's evaluation transform; shorter side 256, crop 224 at crop_pct 0.875).
    `colour` "grey": one grey channel repeated to every input channel (MNIST-like sets and digits).
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "squash"
    crop_pct: float | None = None
    colour: str = "RGB"
    layout: str = "NCHW"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problem = self._problem()
        if problem:
            raise EdgecompError(f"preprocessing {problem}")

    def _problem(self) -> str | None:
        if len(self.size) != 2 or min(self.size) < 1:
            return f"size {self.size}: expected (height, width), both positive"
        if not self.mean or len(self.mean) != len(self.std) or min(self.std) <= 0:
            return f"mean {self.mean} / std {self.std}: one value per channel each, std > 0"
        if self.resize not in RESIZES:
            return f"resize {self.resize!r}: expected one of {', '.join(RESIZES)}"
        if (self.resize == "centre_crop") != (self.crop_pct is not None) or not 0 < (self.crop_pct or 1) <= 1:
            return f"crop_pct {self.crop_pct}: a value in (0, 1] with resize 'centre_crop', none with 'squash'"
        if self.colour not in COLOURS:
            return f"colour {self.colour!r}: expected one of {', '.join(COLOURS)}"
        if (self.layout, self.interpolation) != ("NCHW", "bilinear"):
            return f"layout {self.layout!r} / interpolation {self.interpolation!r}: only NCHW / bilinear are read"
        return None

    @property
    def channels(self) -> int:
        return len(self.mean)

    def to_metadata(self) -> dict[str, str]:
        """The file metadata entry: {"preprocess": JSON}."""
        return {METADATA_KEY: json.dumps(asdict(self), separators=(",", ":"))}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Preprocess | None:
        """The preprocessing a file's metadata records; None for a file without it (made elsewhere, or by an
        edgecomp before it was recorded)."""
        if METADATA_KEY not in metadata:
            return None
        try:
            described = json.loads(metadata[METADATA_KEY])
            known = {f.name for f in fields(cls)}
            if not isinstance(described, dict) or not set(described) <= known:
                raise ValueError(f"unexpected keys {sorted(set(described) - known)}")
            return cls(**described)
        except (ValueError, TypeError) as e:
            raise EdgecompError(f"the file's preprocessing metadata is not readable ({e})") from None

    def describe(self) -> str:
        """One line for people: "224x224 centre_crop 0.875, RGB, mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5)"."""
        resize = self.resize + (f" {self.crop_pct:g}" if self.crop_pct is not None else "")
        return f"{self.size[0]}x{self.size[1]} {resize}, {self.colour}, mean {self.mean}, std {self.std}"


def pillow() -> Any:
    """Pillow's Image module, or one clear error where it is not installed (a device may lack it)."""
    try:
        from PIL import Image
    except ImportError:
        raise EdgecompError("reading images needs Pillow, which is not installed: pip install pillow") from None
    return Image


def read_images(paths: Sequence[str | Path], preprocess: Preprocess) -> np.ndarray:
    """Float32 batch (N, channels, H, W) of the image files at `paths`, as `preprocess` says."""
    image_module = pillow()
    mean, std = (np.array(v, np.float32).reshape(-1, 1, 1) for v in (preprocess.mean, preprocess.std))
    batch = np.empty((len(paths), preprocess.channels, *preprocess.size), np.float32)
    for i, path in enumerate(paths):
        try:
            with image_module.open(path) as image:
                pixels = resized(image, preprocess)
        except OSError as e:
            raise EdgecompError(f"{path}: not an image Pillow can read ({e})") from None
        batch[i] = (channels_first(pixels, preprocess.channels).astype(np.float32) / 255 - mean) / std
    return batch


def resized(image: Any, preprocess: Preprocess) -> np.ndarray:
    """A Pillow image's uint8 pixels at `preprocess.size`: HWC for RGB, HW for grey."""
    image = image.convert("L" if preprocess.colour == "grey" else "RGB")
    height, width = preprocess.size
    if preprocess.resize == "squash":
        return np.asarray(image.resize((width, height), pillow().BILINEAR), np.uint8)
    return centre_crop(image, preprocess.size, preprocess.crop_pct)


def centre_crop(image: Any, size: int | tuple[int, int], crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """A Pillow image's uint8 pixels: scaled (bilinear) to cover round(size / crop_pct) on each side (for a
    square size: the shorter side), then the centre `size` (an int: square) cut out."""
    height, width = (size, size) if isinstance(size, int) else size
    scale = max(round(height / crop_pct) / image.height, round(width / crop_pct) / image.width)
    image = image.resize((round(image.width * scale), round(image.height * scale)), pillow().BILINEAR)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)), np.uint8)


def channels_first(pixels: np.ndarray, channels: int) -> np.ndarray:
    """HWC (or HW grey, repeated to `channels`) -> CHW."""
    if pixels.ndim == 2:
        return np.repeat(pixels[None], channels, axis=0)
    return pixels.transpose(2, 0, 1)
