"""COCO mAP of a split's detections, computed by pycocotools itself rather than by hand.

The ground truth and the detections are turned into in-memory COCO objects (no files) and scored by
``COCOeval``, so the numbers are the ones a COCO leaderboard would print for the same boxes.
Boxes are normalised; they are scaled to a fixed square image of ``IMAGE_SIZE`` pixels, which leaves
every IoU, and so the overall AP, unchanged (COCO's small/medium/large split does depend on it, and is
not reported). Imports numpy and pycocotools only: no torch.

>>> coco_map(postprocess(outputs), targets)   # targets: [N, M, 5] rows (class, x1, y1, x2, y2), -1 padding
{'map': 0.41, 'map50': 0.72, 'map75': 0.40, 'mar100': 0.52}
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

if TYPE_CHECKING:
    from targets.detect import Detections

IMAGE_SIZE = 1000  # pixels per side of the image the normalised boxes are scaled to

# COCOeval.stats positions of the numbers returned (its summarize() order).
_STATS = {"map": 0, "map50": 1, "map75": 2, "mar100": 8}
RESAMPLES, BOOTSTRAP_SEED = 300, 0  # the bootstrap of mAP@.5's interval: fixed, so a rerun gives the same bounds
Z95 = 1.959963984540054  # two-sided 95% of a normal


def coco_map(detections: list[Detections], targets: np.ndarray) -> dict[str, float]:
    """mAP@[.5:.95] ("map"), mAP@.5 ("map50"), mAP@.75 ("map75") and recall at 100 detections ("mar100").

    `detections`: one per image of `targets`, which is [N, M, 5] (class, x1, y1, x2, y2), padding rows
    class -1. The categories are the classes seen in the ground truth: a detection of another class
    has no category to count against. COCOeval uses at most 100 detections per image and class.
    A split with nothing to find or nothing found scores 0, not NaN.
    """
    return _scores(_evaluation(detections, targets))


def coco_map_with_interval(
    detections: list[Detections], targets: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[dict[str, float], tuple[float, float]]:
    """`coco_map`'s scores and a 95% interval of mAP@.5 from one evaluation (COCOeval's matching is most of the
    time: ~1 min for 5,000 images of 100 detections on a 2-core machine).

    mAP is not a mean over images, so no closed form (Wilson's, for top-1) applies: the test images are drawn
    with replacement `resamples` times and each draw's mAP@.5 is COCOeval's accumulation over the drawn images,
    from the per-image matches found once (a detection's match depends on its image alone), each image weighted
    by how often it was drawn. The interval is mAP@.5 +- 1.96 standard deviations of those draws, clipped to
    [0, 1], not their percentiles: the draws' mAP runs above the split's own (the running maximum of interpolated
    precision rises on a draw's coarser curve; 0.6-1.5 standard deviations on synthetic splits of 200-2,000
    images), so percentiles sit off-centre and can exclude the estimate itself."""
    evaluation = _evaluation(detections, targets)
    scores = _scores(evaluation)
    if evaluation is None:
        return scores, (0.0, 0.0)
    categories = _matches_at_50(evaluation)
    draws = np.random.default_rng(seed).multinomial(len(targets), np.full(len(targets), 1 / len(targets)), resamples)
    spread = Z95 * float(np.std([_weighted_map(categories, weights) for weights in draws]))
    return scores, (max(scores["map50"] - spread, 0.0), min(scores["map50"] + spread, 1.0))


def _scores(evaluation: COCOeval | None) -> dict[str, float]:
    if evaluation is None:
        return dict.fromkeys(_STATS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation.accumulate()
        evaluation.summarize()
    return {name: max(float(evaluation.stats[index]), 0.0) for name, index in _STATS.items()}  # -1: nothing to score


def _evaluation(detections: list[Detections], targets: np.ndarray) -> COCOeval | None:
    """COCOeval after `evaluate()` (per-image matches), or None where there is nothing to find or nothing found."""
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 3 or targets.shape[2] != 5 or len(targets) != len(detections):
        raise ValueError(
            f"expected one Detections per image of targets [N, M, 5], got {len(detections)} detections "
            f"and targets of shape {targets.shape}"
        )
    truth = _ground_truth(targets)
    results = _results(detections)
    if not truth.dataset["annotations"] or not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # its progress prints would interleave with the run's
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluation.evaluate()
    return evaluation


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """Normalised x1, y1, x2, y2 -> COCO's pixel x, y, width, height (an inverted box has no area)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * IMAGE_SIZE
    return np.concatenate([boxes[:, :2], np.clip(boxes[:, 2:] - boxes[:, :2], 0.0, None)], axis=1)


def _ground_truth(targets: np.ndarray) -> COCO:
    annotations = []
    for image_id, rows in enumerate(targets):
        rows = rows[rows[:, 0] >= 0]
        for label, box in zip(rows[:, 0].astype(int).tolist(), _xywh(rows[:, 1:]).tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCOeval reads id 0 as "matched nothing"
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    truth = COCO()
    truth.dataset = {
        "images": [{"id": i, "width": IMAGE_SIZE, "height": IMAGE_SIZE} for i in range(len(targets))],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in sorted({a["category_id"] for a in annotations})],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        truth.createIndex()
    return truth


def _results(detections: list[Detections]) -> list[dict[str, Any]]:
    return [
        {"image_id": image_id, "category_id": label, "bbox": box, "score": score}
        for image_id, found in enumerate(detections)
        for label, box, score in zip(
            np.asarray(found.labels).astype(int).tolist(),
            _xywh(found.boxes).tolist(),
            np.asarray(found.scores, dtype=np.float64).tolist(),
            strict=True,
        )
    ]


@dataclass(frozen=True)
class _CategoryMatches:
    """One category's detections over the whole split at IoU .5, in COCOeval's order (best score first, ties in
    image order): which image each is in, whether it is a true or a false positive (neither where COCOeval
    ignores it), and each image's count of ground truths that count."""

    image: np.ndarray  # [D] int
    true: np.ndarray  # [D] bool
    false: np.ndarray  # [D] bool
    truths: np.ndarray  # [images] int


def _matches_at_50(evaluation: COCOeval) -> list[_CategoryMatches]:
    """Per category, the per-image matches of `evaluation.evaluate()` (area "all", at most 100 detections per
    image, IoU threshold .5), laid out as `COCOeval.accumulate` concatenates them."""
    params = evaluation.params
    images, areas = len(params.imgIds), len(params.areaRng)
    at_50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    found = []
    for k in range(len(params.catIds)):
        entries = [(i, e) for i in range(images) if (e := evaluation.evalImgs[k * areas * images + i]) is not None]
        if not entries:
            continue
        scores = np.concatenate([e["dtScores"] for _, e in entries])
        order = np.argsort(-scores, kind="mergesort")  # COCOeval's sort
        image = np.concatenate([np.full(len(e["dtScores"]), i) for i, e in entries])[order]
        matched = np.concatenate([e["dtMatches"][at_50] for _, e in entries])[order] > 0
        ignored = np.concatenate([e["dtIgnore"][at_50] for _, e in entries])[order] > 0
        truths = np.zeros(images, dtype=np.int64)
        for i, e in entries:
            truths[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        found.append(_CategoryMatches(image.astype(np.int64), matched & ~ignored, ~matched & ~ignored, truths))
    return found


def _weighted_map(categories: list[_CategoryMatches], weights: np.ndarray) -> float:
    """mAP@.5 of the split with image i counted weights[i] times: COCOeval's 101-point interpolated precision,
    averaged over the categories that have a ground truth among the counted images."""
    recall_points = np.linspace(0.0, 1.0, 101)
    averages = []
    for category in categories:
        positives = float(np.dot(weights, category.truths))
        if positives == 0:
            continue
        counted = weights[category.image]
        true, false = np.cumsum(category.true * counted), np.cumsum(category.false * counted)
        precision = np.maximum.accumulate((true / (true + false + np.spacing(1)))[::-1])[::-1]
        # Precision at each recall point, 0 past the last detection (and throughout where there is none).
        index = np.searchsorted(true / positives, recall_points, side="left")
        averages.append(np.append(precision, 0.0)[np.minimum(index, len(precision))].mean())
    return float(np.mean(averages)) if averages else 0.0
