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
from typing import TYPE_CHECKING, Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

if TYPE_CHECKING:
    from targets.detect import Detections

IMAGE_SIZE = 1000  # pixels per side of the image the normalised boxes are scaled to

# COCOeval.stats positions of the numbers returned (its summarize() order).
_STATS = {"map": 0, "map50": 1, "map75": 2, "mar100": 8}


def coco_map(detections: list[Detections], targets: np.ndarray) -> dict[str, float]:
    """mAP@[.5:.95] ("map"), mAP@.5 ("map50"), mAP@.75 ("map75") and recall at 100 detections ("mar100").

    `detections`: one per image of `targets`, which is [N, M, 5] (class, x1, y1, x2, y2), padding rows
    class -1. The categories are the classes seen in the ground truth: a detection of another class
    has no category to count against. COCOeval uses at most 100 detections per image and class.
    A split with nothing to find or nothing found scores 0, not NaN.
    """
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 3 or targets.shape[2] != 5 or len(targets) != len(detections):
        raise ValueError(
            f"expected one Detections per image of targets [N, M, 5], got {len(detections)} detections "
            f"and targets of shape {targets.shape}"
        )
    truth = _ground_truth(targets)
    results = _results(detections)
    if not truth.dataset["annotations"] or not results:
        return dict.fromkeys(_STATS, 0.0)
    stats = _evaluate(truth, results)
    return {name: max(float(stats[index]), 0.0) for name, index in _STATS.items()}  # -1: nothing to score


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


def _evaluate(truth: COCO, results: list[dict[str, Any]]) -> np.ndarray:
    """COCOeval's summary stats; its progress prints are swallowed (they would interleave with the run's)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats
