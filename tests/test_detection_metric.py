"""COCO mAP on hand-made cases whose value is known: perfect, shifted, missed, duplicate, wrong class, empty."""

from __future__ import annotations

import math

import numpy as np
import pytest

from compress.tasks.coco_map import coco_map
from targets.detect import Detections

BOX_A = (0.1, 0.1, 0.6, 0.6)
BOX_B = (0.5, 0.55, 0.9, 0.95)
MISSED_HALF = 51 / 101  # COCO interpolates precision at 101 recall points: recall 0.5 covers 0, .01, ..., .5


def truth(*images: list[tuple[float, ...]]) -> np.ndarray:
    """[N, M, 5] ground truth from per-image lists of (class, x1, y1, x2, y2), padded with -1 rows."""
    rows = max(1, *(len(image) for image in images))
    out = np.full((len(images), rows, 5), -1.0, np.float32)
    for i, image in enumerate(images):
        if image:
            out[i, : len(image)] = image
    return out


def found(*rows: tuple[float, ...]) -> Detections:
    """Detections of one image from (class, score, x1, y1, x2, y2) rows."""
    table = np.asarray(rows, np.float32).reshape(-1, 6)
    return Detections(boxes=table[:, 2:], scores=table[:, 1], labels=table[:, 0].astype(np.int64))


def with_iou(box: tuple[float, ...], iou: float) -> tuple[float, ...]:
    """A box inside `box`, narrowed so that its IoU with `box` is exactly `iou`."""
    x1, y1, x2, y2 = box
    return (x1, y1, x1 + (x2 - x1) * iou, y2)


def test_perfect_detections_score_one() -> None:
    targets = truth([(0, *BOX_A), (1, *BOX_B)], [(1, *BOX_A)])
    detections = [found((0, 0.9, *BOX_A), (1, 0.8, *BOX_B)), found((1, 0.7, *BOX_A))]
    scores = coco_map(detections, targets)
    assert scores == pytest.approx({"map": 1.0, "map50": 1.0, "map75": 1.0, "mar100": 1.0})


@pytest.mark.parametrize(("iou", "expected_map"), [(0.52, 0.1), (0.72, 0.5), (0.93, 0.9)])
def test_a_shifted_box_passes_the_iou_thresholds_below_its_iou(iou: float, expected_map: float) -> None:
    # mAP@[.5:.95] averages ten thresholds .50, .55, ..., .95: IoU 0.72 passes .50-.70, five of ten.
    scores = coco_map([found((0, 0.9, *with_iou(BOX_A, iou)))], truth([(0, *BOX_A)]))
    assert scores["map50"] == pytest.approx(1.0)
    assert scores["map"] == pytest.approx(expected_map)
    assert scores["map75"] == pytest.approx(1.0 if iou >= 0.75 else 0.0)


def test_a_missed_object_caps_recall() -> None:
    targets = truth([(0, *BOX_A), (0, *BOX_B)])
    scores = coco_map([found((0, 0.9, *BOX_A))], targets)
    assert scores["map50"] == pytest.approx(MISSED_HALF)
    assert scores["map"] == pytest.approx(MISSED_HALF)
    assert scores["mar100"] == pytest.approx(0.5)


def test_a_duplicate_costs_nothing_below_the_true_detection() -> None:
    targets = truth([(0, *BOX_A)])
    assert coco_map([found((0, 0.9, *BOX_A), (0, 0.8, *BOX_A))], targets)["map"] == pytest.approx(1.0)


@pytest.mark.parametrize(("false_score", "expected"), [(0.5, 1.0), (0.95, 0.5)])
def test_a_false_positive_above_the_true_detection_halves_precision(false_score: float, expected: float) -> None:
    # IoU 0.3 matches at no threshold; ranked first it makes precision 1/2 at recall 1, ranked second it is free.
    poor = with_iou(BOX_A, 0.3)
    detections = [found((0, 0.9, *BOX_A), (0, false_score, *poor))]
    scores = coco_map(detections, truth([(0, *BOX_A)]))
    assert scores["map50"] == pytest.approx(expected)
    assert scores["map"] == pytest.approx(expected)


def test_a_wrong_class_scores_nothing_for_the_true_class() -> None:
    targets = truth([(0, *BOX_A), (1, *BOX_B)])
    right = coco_map([found((0, 0.9, *BOX_A), (1, 0.8, *BOX_B))], targets)
    wrong = coco_map([found((0, 0.9, *BOX_A), (0, 0.8, *BOX_B))], targets)
    assert right["map"] == pytest.approx(1.0)
    assert wrong["map"] == pytest.approx(0.5)  # class 0: AP 1 (its false positive ranks last); class 1: AP 0


def test_no_detections_score_zero_not_nan() -> None:
    scores = coco_map([found(), found()], truth([(0, *BOX_A)], [(1, *BOX_B)]))
    assert scores == {"map": 0.0, "map50": 0.0, "map75": 0.0, "mar100": 0.0}


def test_images_without_ground_truth_count_their_false_positives() -> None:
    targets = truth([(0, *BOX_A)], [])
    assert coco_map([found((0, 0.9, *BOX_A)), found()], targets)["map"] == pytest.approx(1.0)
    spurious = [found((0, 0.9, *BOX_A)), found((0, 0.95, *BOX_B))]
    assert coco_map(spurious, targets)["map"] == pytest.approx(0.5)


def test_a_split_without_ground_truth_scores_zero() -> None:
    scores = coco_map([found((0, 0.9, *BOX_A)), found()], truth([], []))
    assert all(value == 0.0 and not math.isnan(value) for value in scores.values())


def test_pycocotools_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    coco_map([found((0, 0.9, *BOX_A))], truth([(0, *BOX_A)]))
    assert capsys.readouterr().out == ""


def test_one_detections_per_image_is_required() -> None:
    with pytest.raises(ValueError, match="one Detections per image"):
        coco_map([found()], truth([(0, *BOX_A)], []))


# ---- mAP@.5's bootstrap interval ------------------------------------------------------------------------------


def noisy_split(images: int, seed: int = 1) -> tuple[list[Detections], np.ndarray]:
    """Random images of up to 7 objects in 5 classes, detected with jittered boxes, a fifth of them in the wrong
    class, plus up to 4 false positives each, at random scores: mAP@.5 around 0.3, every case COCOeval has."""
    rng = np.random.default_rng(seed)
    targets = np.full((images, 8, 5), -1.0)
    detections = []
    for i in range(images):
        k = int(rng.integers(0, 8))
        corner = rng.uniform(0, 0.6, (k, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(0.05, 0.4, (k, 2))], 1)
        labels = rng.integers(0, 5, k)
        targets[i, :k] = np.concatenate([labels[:, None], boxes], 1)
        spurious = rng.uniform(0, 0.7, (int(rng.integers(0, 5)), 2))
        shown = np.concatenate(
            [boxes + rng.normal(0, 0.03, boxes.shape), np.concatenate([spurious, spurious + 0.2], 1)]
        )
        wrong = np.where(rng.random(k) < 0.2, rng.integers(0, 5, k), labels)
        classes = np.concatenate([wrong, rng.integers(0, 5, len(spurious))])
        detections.append(Detections(shown.astype(np.float32), rng.random(len(shown)).astype(np.float32), classes))
    return detections, targets


def test_each_bootstrap_draw_is_cocoevals_map50_of_the_drawn_images() -> None:
    """A draw weights each image by how often it was drawn; COCOeval on the images repeated that often agrees
    to the last digit, and with every weight 1 it is the split's own mAP@.5 (class 4 is never detected: AP 0)."""
    from compress.tasks.coco_map import _evaluation, _matches_at_50, _weighted_map

    detections, targets = noisy_split(120)
    detections = [
        Detections(d.boxes[d.labels != 4], d.scores[d.labels != 4], d.labels[d.labels != 4]) for d in detections
    ]
    matches = _matches_at_50(_evaluation(detections, targets))
    expected = coco_map(detections, targets)["map50"]
    assert _weighted_map(matches, np.ones(120, np.int64)) == pytest.approx(expected, abs=1e-12)
    weights = np.random.default_rng(3).multinomial(120, np.full(120, 1 / 120))
    drawn = np.repeat(np.arange(120), weights)
    expected = coco_map([detections[i] for i in drawn], targets[drawn])["map50"]
    assert _weighted_map(matches, weights) == pytest.approx(expected, abs=1e-12)


def test_the_interval_is_centred_on_the_estimate_narrows_with_more_images_and_repeats() -> None:
    from compress.tasks.coco_map import coco_map_with_interval

    small, large = noisy_split(40), noisy_split(400)
    scores, (low, high) = coco_map_with_interval(*small)
    assert scores == coco_map(*small)
    assert low < scores["map50"] < high and scores["map50"] - low == pytest.approx(high - scores["map50"])
    assert coco_map_with_interval(*small)[1] == (low, high)  # a fixed seed: the same bounds on a rerun
    narrow = np.subtract(*coco_map_with_interval(*large)[1][::-1])
    assert narrow < 0.6 * (high - low)  # ~1/sqrt(10) of it in theory
    perfect = [found(*[(row[0], 0.9, *row[1:]) for row in image if row[0] >= 0]) for image in small[1]]
    assert coco_map_with_interval(perfect, small[1])[1] == (1.0, 1.0)
    assert coco_map_with_interval([found() for _ in range(3)], truth([], [], []))[1] == (0.0, 0.0)


def test_bootstrap_draws_run_above_the_estimate_so_percentiles_would_sit_off_centre() -> None:
    """Why the interval is the estimate +- 1.96 sd of the draws rather than their percentiles."""
    from compress.tasks.coco_map import _evaluation, _matches_at_50, _weighted_map

    detections, targets = noisy_split(400)
    matches = _matches_at_50(_evaluation(detections, targets))
    draws = np.random.default_rng(0).multinomial(400, np.full(400, 1 / 400), 100)
    values = np.array([_weighted_map(matches, weights) for weights in draws])
    assert values.mean() - coco_map(detections, targets)["map50"] > 0.3 * values.std()
