"""Object detection (SSD-style): multibox loss against the model's anchors, COCO mAP of the post-processed
outputs, parity on the raw outputs.

A detector here is its exportable core (`compress.detectors`): image in, raw class logits and decoded boxes
per anchor out. Score threshold, top-k and NMS are `targets.detect.postprocess`, the numpy step every
runtime's outputs go through, so PyTorch, TFLite and OpenVINO are scored by one piece of code.
Labels are [N, M, 5] rows (class, x1, y1, x2, y2), normalised, padded with -1 (see compress.data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from compress.detectors import detection_kd_loss, model_anchors, ssd_loss
from compress.tasks._base import TASKS, Loss
from compress.tasks.coco_map import coco_map, coco_map_with_interval
from targets.detect import DETECTOR_OUTPUTS, postprocess, split_outputs


class Detection:
    name = "detection"
    metric = "map50"
    outputs = DETECTOR_OUTPUTS

    def loss(self, model: nn.Module, label_smoothing: float) -> Loss:
        model_anchors(model)  # a detector, or say so now
        # The anchors are fixed by the input size (pruning changes channels, not maps) but read from the model at
        # every call: training moves the model to its device after this loss is made, which replaces the buffer,
        # and a tensor taken now would stay on the CPU and be copied to the GPU at every step.
        return lambda outputs, labels: ssd_loss(outputs, labels, model_anchors(model).to(labels.device))

    def distill(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], temperature: float
    ) -> torch.Tensor:
        return detection_kd_loss(student, teacher, temperature)

    def uninformed(self, num_classes: int) -> None:
        """No collapse check: a detector's loss has no input-free fixed point (it depends on how many anchors
        match how many boxes), and mAP near 0 is normal early in a short run."""
        return None

    def score(self, outputs: list[np.ndarray], labels: np.ndarray) -> dict[str, float]:
        return coco_map(postprocess(outputs), labels)

    def correct(self, outputs: list[np.ndarray], labels: np.ndarray) -> None:
        return None  # mAP is not a mean over images: no per-image right or wrong

    def score_with_interval(
        self, outputs: list[np.ndarray], labels: np.ndarray
    ) -> tuple[dict[str, float], tuple[float, float]]:
        """The scores and mAP@.5's 95% bootstrap interval, the images resampled (`coco_map_with_interval`)."""
        return coco_map_with_interval(postprocess(outputs), labels)

    def parity(self, reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict[str, float]:
        """Largest difference over logits and boxes, and how often the anchors' top class agrees."""
        (ref_logits, ref_boxes), (logits, boxes) = split_outputs(reference), split_outputs(outputs)
        diffs = [np.abs(ref_logits.astype(np.float64) - logits), np.abs(ref_boxes.astype(np.float64) - boxes)]
        return {
            "max_abs_diff": float(max(diff.max() for diff in diffs)),
            "mean_abs_diff": float(np.mean(np.concatenate([diff.ravel() for diff in diffs]))),
            "top1_agreement": float(np.mean(ref_logits.argmax(-1) == logits.argmax(-1))),
        }


TASKS.register("detection")(Detection())
