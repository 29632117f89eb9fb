"""`digit_scenes`: the embedded detection set, real handwriting placed on textured scenes (no download).

Detection needs a default set that installs with the package, trains to a useful mAP on a laptop CPU in
minutes and has boxes that are right by construction. Each scene is made from scikit-learn's 1,797 real
8x8 handwritten digits (`load_digits()`, shipped inside its wheel):

1. The digits are split into train / val / test pools first (the same stratified split as the `digits`
   set), so the test scenes hold handwriting never seen in training: a detector is scored on new writers'
   strokes, not on memorised ones.
2. A background is drawn: two random colours mixed by a pattern that blends smooth random noise at a few
   scales (`NOISE_CELLS`), a linear gradient and stripes. Edges and texture everywhere mean the detector
   has to learn what a digit looks like, not to fire at anything that is not flat.
3. Each scene asks for one to six digits, drawn from its split's pool. Each gets a random size (`SIDE_RANGE`
   of the canvas side) and is upscaled from 8x8 with bilinear interpolation; its ink is where the upscaled
   intensity exceeds `INK_THRESHOLD`, and the box is the tight box of the ink pixels, so it is exact. The
   digit takes the first of `PLACEMENT_TRIES` random positions where its box covers at most `MAX_OVERLAP`
   of any smaller placed box (every object stays visible; with no such position it is left out), and is
   blended in with its intensity as alpha, in a random colour made dark over a light background and light
   over a dark one.

Scenes are rendered at `CANVAS` x `CANVAS` (large enough for the smallest digit, 13 px, to stay legible)
and resized to the recipe's image size on access. Everything comes from fixed seeds, so every run sees the
same scenes (byte for byte with a given numpy and BLAS). All splits render in about a second of CPU,
vectorised over scenes, and are cached per process (55 MB for the training split).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from compress.data._base import DATASETS, DataSplits, normalization, normalize, stratified_split
from compress.data.detection_files import detection_splits
from compress.data.digits import MEAN, STD, digit_images
from compress.schema import DataSpec

SCENES = {"train": 2000, "val": 300, "test": 300}  # scenes per split
CANVAS = 96  # pixels, square
MAX_OBJECTS = 6
TARGET_ROWS = 8  # M: rows of a target, objects then -1 padding
SIDE_RANGE = (0.14, 0.45)  # a digit's side as a fraction of the canvas side
INK_THRESHOLD = 0.25  # upscaled intensity in [0, 1] above which a pixel is ink (and inside the box)
MAX_OVERLAP = 0.1  # intersection over the smaller box that two placed digits may share
PLACEMENT_TRIES = 20
NOISE_CELLS = (3, 6, 12, 24)  # background noise grids, coarse to fine
SCENE_SEED = 20240505  # fixed: the scenes must not move with the recipe's training seed
NUM_CLASSES = 10
_CHUNK = 128  # backgrounds rendered this many at a time, to bound memory


@dataclass(frozen=True)
class Scenes:
    """One split's scenes, with how each object was made (what the tests check the boxes against)."""

    images: np.ndarray  # uint8 [N, 3, CANVAS, CANVAS]
    targets: np.ndarray  # float32 [N, TARGET_ROWS, 5]: (class, x1, y1, x2, y2) in [0, 1], padding -1
    sources: np.ndarray  # int64 [N, TARGET_ROWS]: each object's index in load_digits(), padding -1
    placements: np.ndarray  # int64 [N, TARGET_ROWS, 3]: (x0, y0, side) of the upscaled digit, padding -1


@functools.cache
def _source_digits() -> tuple[np.ndarray, np.ndarray]:
    return digit_images()


@functools.cache
def digit_pools() -> dict[str, np.ndarray]:
    """Indices into load_digits() that each split's scenes draw from; disjoint, stratified by digit."""
    _, labels = _source_digits()
    return dict(zip(SCENES, stratified_split(labels, val=0.1, test=0.2), strict=True))


@functools.cache
def _resize_matrix(out: int, inp: int) -> np.ndarray:
    """[out, inp] weights of 1-D bilinear resizing (half-pixel centres, edges clamped, like torch's)."""
    source = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, inp - 1)
    low = np.floor(source).astype(int)
    high = np.minimum(low + 1, inp - 1)
    weights = np.zeros((out, inp), dtype=np.float32)
    np.add.at(weights, (np.arange(out), low), 1 - (source - low))
    np.add.at(weights, (np.arange(out), high), source - low)
    return weights


def _upsample(grids: np.ndarray, size: int) -> np.ndarray:
    """[..., h, w] -> [..., size, size], bilinear."""
    return _resize_matrix(size, grids.shape[-2]) @ grids @ _resize_matrix(size, grids.shape[-1]).T


def digit_ink(digits: np.ndarray, side: int) -> np.ndarray:
    """uint8 8x8 digits [m, 8, 8] upscaled to intensities [m, side, side] in [0, 1]: ink where > INK_THRESHOLD."""
    return _upsample(digits.astype(np.float64) / 255.0, side)


def _background_chunk(rng: np.random.Generator, count: int) -> np.ndarray:
    """uint8 [count, 3, CANVAS, CANVAS]: two colours mixed by a pattern of noise, a gradient and stripes.

    The pattern is smooth, so it is drawn at half resolution and upsampled: a quarter of the work.
    """
    size = CANVAS // 2
    centre = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    y, x = centre[None, :, None], centre[None, None, :]

    def along(angle: np.ndarray) -> np.ndarray:  # signed distance from the centre along a random direction
        return x * np.cos(angle)[:, None, None] + y * np.sin(angle)[:, None, None]

    scale_weights = rng.dirichlet(np.ones(len(NOISE_CELLS)), count).astype(np.float32)
    noise = sum(w[:, None, None] * _upsample(rng.random((count, cells, cells), dtype=np.float32), size)
                for w, cells in zip(scale_weights.T, NOISE_CELLS, strict=True))  # fmt: skip
    gradient = 0.5 + along(rng.uniform(0, 2 * np.pi, count)) / np.sqrt(2)
    frequency, phase = rng.uniform(2, 8, count)[:, None, None], rng.uniform(0, 2 * np.pi, count)[:, None, None]
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * along(rng.uniform(0, np.pi, count)) + phase)
    mix = rng.dirichlet(np.ones(3), count).astype(np.float32)[:, :, None, None]
    pattern = _upsample((mix[:, 0] * noise + mix[:, 1] * gradient + mix[:, 2] * stripes).astype(np.float32), CANVAS)
    first = rng.uniform(0, 255, (count, 3, 1, 1)).astype(np.float32)
    second = np.clip(first + rng.uniform(-110, 110, (count, 3, 1, 1)), 0, 255).astype(np.float32)
    image = (second - first) * pattern[:, None]  # the pattern is in [0, 1], so the image stays in [0, 255]
    image += first
    return np.rint(image, out=image).astype(np.uint8)


def render_backgrounds(split: str, count: int) -> np.ndarray:
    """The scenes of `build_scenes(split, count)` before any digit is drawn: uint8 [count, 3, CANVAS, CANVAS]."""
    rng = np.random.default_rng([SCENE_SEED, list(SCENES).index(split), 0])
    return np.concatenate([_background_chunk(rng, min(_CHUNK, count - start)) for start in range(0, count, _CHUNK)])


def _tight_boxes(mask: np.ndarray) -> np.ndarray:
    """[m, s, s] ink masks -> [m, 4] int (x1, y1, x2, y2) of their tight boxes, in pixel edges of the patch."""
    side = mask.shape[-1]
    cols, rows = mask.any(1), mask.any(2)
    return np.stack(
        [cols.argmax(1), rows.argmax(1), side - cols[:, ::-1].argmax(1), side - rows[:, ::-1].argmax(1)], axis=1
    )


def _free(candidates: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """[m, T] whether each of T candidate boxes [m, T, 4] overlaps none of the placed boxes [m, K, 4] by more
    than MAX_OVERLAP of the smaller box (a small digit inside a big one would be hidden, whatever the IoU).
    Empty slots are all-zero boxes, which intersect nothing."""
    a, b = candidates[:, :, None, :], placed[:, None, :, :]
    width = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    height = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]), (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    shared = np.clip(width, 0, None) * np.clip(height, 0, None)
    return (shared <= MAX_OVERLAP * np.maximum(np.minimum(*area), 1)).all(2)


def _blend(images: np.ndarray, scenes: np.ndarray, corners: np.ndarray, alpha: np.ndarray, shades: np.ndarray) -> None:
    """Blend one digit into each of `scenes` in place, through alpha [m, s, s] at corners [m, 2] (x0, y0).

    The colour is a random shade [m, 3] in [0, 76], made dark over a light background and light over a dark
    one (judged under the ink). Only the ink pixels are touched, through flat indices, which is the cheap way.
    """
    which, y, x = np.nonzero(alpha)
    pixel = (scenes[which] * 3 * CANVAS + corners[which, 1] + y) * CANVAS + corners[which, 0] + x
    pixel = pixel[:, None] + np.arange(3) * CANVAS * CANVAS  # [K, 3]
    flat = images.reshape(-1)  # a view: images is contiguous
    under = flat[pixel].astype(np.float32)
    luminance = np.bincount(which, under @ np.array([0.299, 0.587, 0.114]), len(scenes)) / np.bincount(which)
    colour = np.where(luminance[:, None] > 127.5, shades, 255 - shades)[which]
    flat[pixel] = np.rint(under + (colour - under) * alpha[which, y, x, None]).astype(np.uint8)


class _Layout:
    """The objects placed so far, by scene and slot; a slot with no object has source -1 and a zero box."""

    def __init__(self, count: int) -> None:
        self.boxes = np.zeros((count, MAX_OBJECTS, 4), dtype=np.int64)  # pixel edges on the canvas
        self.sources = np.full((count, MAX_OBJECTS), -1, dtype=np.int64)
        self.placements = np.full((count, MAX_OBJECTS, 3), -1, dtype=np.int64)

    def place(self, images: np.ndarray, slot: int, scenes: np.ndarray, digits: np.ndarray, draws: dict) -> None:
        """Put one digit of a single size into each of `scenes` at the first candidate corner that is free."""
        side = int(draws["side"][0])
        ink = digit_ink(digits[draws["source"]], side)
        mask = ink > INK_THRESHOLD
        candidates = _tight_boxes(mask)[:, None, :] + np.tile(draws["corners"], 2)
        free = _free(candidates, self.boxes[scenes])
        found = free.any(1)
        rows, pick = np.flatnonzero(found), free.argmax(1)[found]
        corners = draws["corners"][rows, pick]
        self.boxes[scenes[rows], slot] = candidates[rows, pick]
        self.sources[scenes[rows], slot] = draws["source"][rows]
        self.placements[scenes[rows], slot] = np.column_stack([corners, np.full(len(rows), side)])
        alpha = np.where(mask, np.minimum(1.5 * ink, 1.0), 0.0)[rows]
        _blend(images, scenes[rows], corners, alpha, draws["shade"][rows])

    def compacted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, sources, placements) with each scene's objects first, in drawing order, then the empty slots."""
        order = np.argsort(self.sources < 0, axis=1, kind="stable")
        return (
            np.take_along_axis(self.boxes, order[:, :, None], 1),
            np.take_along_axis(self.sources, order, 1),
            np.take_along_axis(self.placements, order[:, :, None], 1),
        )


def _compose(images: np.ndarray, rng: np.random.Generator, pool: np.ndarray, digits: np.ndarray) -> _Layout:
    """Draw the digits into the backgrounds in place, slot by slot (all scenes at once), and say where they went.

    Each scene wants 1..MAX_OBJECTS digits; each digit gets a size and PLACEMENT_TRIES candidate corners, and
    takes the first corner where its box is free; a digit with no free corner is left out.
    """
    count = len(images)
    wanted = rng.integers(1, MAX_OBJECTS, count, endpoint=True)
    low, high = (round(fraction * CANVAS) for fraction in SIDE_RANGE)
    layout = _Layout(count)
    for slot in range(MAX_OBJECTS):
        scenes = np.flatnonzero(wanted > slot)
        side = rng.integers(low, high, len(scenes), endpoint=True)
        draws = {
            "source": rng.choice(pool, len(scenes)),
            "side": side,
            "corners": rng.integers(0, CANVAS - side[:, None, None], (len(scenes), PLACEMENT_TRIES, 2), endpoint=True),
            "shade": rng.uniform(0, 0.3 * 255, (len(scenes), 3)).astype(np.float32),
        }
        for size in np.unique(side):
            group = side == size
            layout.place(images, slot, scenes[group], digits, {key: value[group] for key, value in draws.items()})
    return layout


@functools.lru_cache(maxsize=len(SCENES))
def build_scenes(split: str, count: int) -> Scenes:
    """`count` scenes of a split, deterministic (see the module docstring); arrays are read-only (shared)."""
    digits, labels = _source_digits()
    images = render_backgrounds(split, count)
    rng = np.random.default_rng([SCENE_SEED, list(SCENES).index(split), 1])
    boxes, sources, placements = _compose(images, rng, digit_pools()[split], digits).compacted()
    rows = np.concatenate([labels[sources][..., None], boxes / CANVAS], axis=2).astype(np.float32)
    rows[sources < 0] = -1.0
    pad = ((0, 0), (0, TARGET_ROWS - MAX_OBJECTS))
    targets = np.pad(rows, (*pad, (0, 0)), constant_values=-1.0)
    sources, placements = (
        np.pad(sources, pad, constant_values=-1),
        np.pad(placements, (*pad, (0, 0)), constant_values=-1),
    )
    for array in (images, targets, sources, placements):
        array.flags.writeable = False
    return Scenes(images, targets, sources, placements)


class SceneDataset(Dataset):
    """Scenes held in memory as uint8; (normalised image at size x size, target [TARGET_ROWS, 5]) on access."""

    def __init__(self, scenes: Scenes, image_size: int, stats: tuple[tuple, tuple]) -> None:
        self.scenes = scenes
        self.image_size = image_size
        self.mean = torch.tensor(stats[0], dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(stats[1], dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.scenes.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.scenes.images[index].copy())
        return normalize(image, self.image_size, self.mean, self.std), torch.from_numpy(
            self.scenes.targets[index].copy()
        )


@DATASETS.register("digit_scenes")
def digit_scenes(spec: DataSpec) -> DataSplits:
    """Handwritten digits on textured scenes, 10 classes. Example: `data: {dataset: digit_scenes, image_size: 128}`."""
    stats = normalization(spec, MEAN, STD)
    train, val, test = (
        SceneDataset(build_scenes(split, count), spec.image_size, stats) for split, count in SCENES.items()
    )
    return detection_splits(spec, train, val, test, NUM_CLASSES, *stats, tuple(str(d) for d in range(NUM_CLASSES)))
