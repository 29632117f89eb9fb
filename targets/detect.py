"""Post-processing of a detector's raw outputs: softmax, score threshold, top-k, per-class NMS.

Every runtime's outputs (TFLite, OpenVINO, ONNX, PyTorch) go through this one numpy function, so a
change in mAP between two rows comes from the model file, never from a different post-processing.
It imports only numpy: it runs on a device that has nothing but numpy and one runtime, and the
benchmark times it there.

The contract with the exported file: two outputs, in either order,
``logits`` [N, A, C+1] (raw class logits over A anchors, index 0 the background) and ``boxes`` [N, A, 4]
(decoded, normalised x1, y1, x2, y2). The result mirrors torchvision's ``SSD.postprocess_detections``,
except that labels count object classes from 0 (the background is gone).

>>> [d.labels for d in postprocess([logits, boxes])]   # one Detections per image
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from targets.base import EdgecompError


@dataclass(frozen=True)
class Detections:
    """The objects found in one image, best score first."""

    boxes: np.ndarray  # (K, 4) float32, normalised x1, y1, x2, y2 in [0, 1]
    scores: np.ndarray  # (K,) float32, softmax probability of the label
    labels: np.ndarray  # (K,) int64, object class in 0..C-1


DETECTOR_OUTPUTS = ("logits", "boxes")  # an exported file's metadata "outputs" of a detector: "logits,boxes"


def is_detector_file(metadata: dict[str, str], shapes: Sequence[Sequence[int]]) -> bool:
    """Whether a file's outputs are a detector's: as its metadata says (edgecomp writes "outputs"), or, for a
    file made elsewhere, as its output shapes suggest."""
    if "outputs" in metadata:
        return metadata["outputs"] == ",".join(DETECTOR_OUTPUTS) and is_detector_outputs(shapes)
    return is_detector_outputs(shapes)


def is_detector_outputs(shapes: Sequence[Sequence[int]]) -> bool:
    """Whether a model's output shapes are the detector contract: [N, A, C+1] logits and [N, A, 4] boxes."""
    if len(shapes) != 2 or any(len(shape) != 3 for shape in shapes):
        return False
    first, second = (tuple(int(d) for d in shape) for shape in shapes)
    return first[:2] == second[:2] and 4 in (first[2], second[2]) and min(first[2], second[2]) >= 2


def split_outputs(outputs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(logits, boxes) from a detector's two outputs in whichever order its runtime returned them.

    Identified by shape: the boxes end in 4. When the logits end in 4 too (three classes), the order
    given is the only clue left, and it is trusted: logits first.
    """
    if not is_detector_outputs([np.shape(out) for out in outputs]):
        shapes = ", ".join(str(tuple(np.shape(out))) for out in outputs)
        raise EdgecompError(
            f"outputs {shapes} are not a detector's: expected logits [N, A, C+1] and boxes [N, A, 4] "
            "(anchors A and batch N equal in both)"
        )
    first, second = outputs
    if np.shape(first)[-1] == 4 and np.shape(second)[-1] != 4:
        first, second = second, first
    return np.asarray(first, np.float32), np.asarray(second, np.float32)


def postprocess(
    outputs: Sequence[np.ndarray],
    score_threshold: float = 0.01,
    iou_threshold: float = 0.5,
    top_k: int = 200,
    max_detections: int = 100,
) -> list[Detections]:
    """One `Detections` per image: softmax over the logits, the background dropped, per class the
    `top_k` best anchors scoring above `score_threshold`, greedy NMS within each class (a box whose
    IoU with a better one exceeds `iou_threshold` is suppressed), then the best `max_detections`."""
    logits, boxes = split_outputs(outputs)
    scores = _softmax(logits)[..., 1:]
    boxes = np.clip(boxes, 0.0, 1.0)
    return [
        _detect_one(image_scores, image_boxes, score_threshold, iou_threshold, top_k, max_detections)
        for image_scores, image_boxes in zip(scores, boxes, strict=True)
    ]


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def _detect_one(
    scores: np.ndarray, boxes: np.ndarray, score_threshold: float, iou_threshold: float, top_k: int, max_det: int
) -> Detections:
    """One image: `scores` (A, C) without background, `boxes` (A, 4) clipped."""
    anchors, top, valid = _candidates(scores, score_threshold, top_k)
    classes, ranks = np.nonzero(valid)
    order = np.argsort(-top[classes, ranks])
    classes, ranks = classes[order], ranks[order]
    kept = _greedy_nms(boxes.T[:, anchors], classes, ranks, iou_threshold, max_det)
    classes, ranks = classes[kept], ranks[kept]
    return Detections(
        boxes=boxes[anchors[classes, ranks]].astype(np.float32),
        scores=top[classes, ranks].astype(np.float32),
        labels=classes.astype(np.int64),
    )


def _candidates(scores: np.ndarray, score_threshold: float, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class, the `top_k` best anchors, best first: anchor indices (C, k), their scores (C, k) and
    whether each passes the threshold (C, k); k is cut to the most that pass in any class."""
    per_class = np.ascontiguousarray(scores.T)  # partitioning along contiguous rows is ~2x faster
    num_anchors = per_class.shape[1]
    k = min(top_k, int((per_class > score_threshold).sum(axis=1).max(initial=0)))
    if 0 < k < num_anchors:
        anchors = np.argpartition(per_class, num_anchors - k, axis=1)[:, num_anchors - k :]
    else:
        anchors = np.broadcast_to(np.arange(k), (per_class.shape[0], k))
    top = np.take_along_axis(per_class, anchors, axis=1)
    order = np.argsort(-top, axis=1)
    anchors, top = np.take_along_axis(anchors, order, axis=1), np.take_along_axis(top, order, axis=1)
    return anchors, top, top > score_threshold


def _greedy_nms(
    coords: np.ndarray, classes: np.ndarray, ranks: np.ndarray, iou_threshold: float, max_det: int
) -> list[int]:
    """Greedy NMS within each class: which of the candidates, visited best score first (`classes`,
    `ranks` index the per-class rows of `coords`, (4, C, k) x1, y1, x2, y2), are kept.

    Visiting all classes in one global score order lets it stop at the `max_det`-th kept box: the
    loop runs about `max_det` times, each against one class's k boxes, however many classes there
    are. IoU as torchvision's box_iou computes it (a zero-area pair gives NaN, which suppresses nothing).
    """
    x1, y1, x2, y2 = coords
    area = (x2 - x1) * (y2 - y1)
    alive = np.ones(area.shape, dtype=bool)
    kept: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for i, (c, r) in enumerate(zip(classes.tolist(), ranks.tolist(), strict=True)):
            if len(kept) == max_det:
                break
            if not alive[c, r]:
                continue
            kept.append(i)
            later = slice(r + 1, None)
            w = np.minimum(x2[c, later], x2[c, r]) - np.maximum(x1[c, later], x1[c, r])
            h = np.minimum(y2[c, later], y2[c, r]) - np.maximum(y1[c, later], y1[c, r])
            inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)  # ufuncs: np.clip's wrapper costs more than the math
            alive[c, later] &= ~(inter / (area[c, r] + area[c, later] - inter) > iou_threshold)
    return kept
