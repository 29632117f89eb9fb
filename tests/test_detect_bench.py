"""Detection post-processing (parity with torchvision's SSD, NMS, thresholds, caps) and the benchmark of a
detector file, which times that post-processing apart from the model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection.ssd import SSD

import targets
from targets.bench import benchmark, format_table
from targets.detect import Detections, is_detector_outputs, postprocess, split_outputs

BOX = (0.2, 0.2, 0.6, 0.6)
OVERLAPPING = (0.25, 0.2, 0.65, 0.6)  # IoU with BOX: 0.35 / 0.45 = 0.78
APART = (0.62, 0.62, 0.9, 0.9)


def random_outputs(n: int, anchors: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits [n, A, C+1] and boxes [n, A, 4] bunched around a few centres (so NMS has work), some outside [0, 1]."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, anchors, classes + 1)) * 3
    centres = rng.uniform(-0.05, 1.05, (8, 2))[rng.integers(0, 8, (n, anchors))]
    centres += rng.normal(0, 0.03, centres.shape)
    sizes = rng.uniform(0.05, 0.4, (n, anchors, 2))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=-1)
    return logits.astype(np.float32), boxes.astype(np.float32)


def torchvision_postprocess(logits: np.ndarray, boxes: np.ndarray, **settings: float) -> list[dict[str, torch.Tensor]]:
    """torchvision's own SSD.postprocess_detections, its box decoding made an identity (our boxes are
    decoded already) and the image 1x1, so that its clipping is ours to [0, 1]."""
    ssd = SimpleNamespace(
        box_coder=SimpleNamespace(decode_single=lambda boxes, anchors: boxes),
        score_thresh=settings.get("score_threshold", 0.01),
        nms_thresh=settings.get("iou_threshold", 0.5),
        topk_candidates=settings.get("top_k", 200),
        detections_per_img=settings.get("max_detections", 100),
    )
    head = {"bbox_regression": torch.from_numpy(boxes), "cls_logits": torch.from_numpy(logits)}
    with torch.no_grad():
        return SSD.postprocess_detections(ssd, head, [None] * len(boxes), [(1, 1)] * len(boxes))


@pytest.mark.parametrize(
    ("anchors", "classes", "settings"),
    [
        (500, 3, {}),
        (2000, 20, {}),
        (800, 6, {"score_threshold": 0.2, "iou_threshold": 0.3, "top_k": 30, "max_detections": 40}),
        (300, 90, {"iou_threshold": 0.7, "max_detections": 300}),
    ],
)
def test_postprocess_matches_torchvision_ssd(anchors: int, classes: int, settings: dict[str, float]) -> None:
    logits, boxes = random_outputs(2, anchors, classes, seed=anchors + classes)
    ours = postprocess([logits, boxes], **settings)
    reference = torchvision_postprocess(logits, boxes, **settings)
    assert len(ours) == len(reference) == 2
    for found, expected in zip(ours, reference, strict=True):
        assert len(found.scores) == len(expected["scores"]) > 10
        np.testing.assert_array_equal(found.labels, expected["labels"].numpy() - 1)  # no background class here
        np.testing.assert_allclose(found.scores, expected["scores"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(found.boxes, expected["boxes"].numpy(), atol=1e-6)


def scene(*rows: tuple[int, float, tuple[float, ...]], classes: int = 3) -> list[np.ndarray]:
    """Outputs of one image, one anchor per (class, score, box) row: that class's probability is `score`,
    the rest goes to the background."""
    probs = np.full((1, len(rows), classes + 1), 1e-9)
    boxes = np.zeros((1, len(rows), 4), np.float32)
    for anchor, (label, score, box) in enumerate(rows):
        probs[0, anchor, 0], probs[0, anchor, label + 1] = 1 - score, score
        boxes[0, anchor] = box
    return [np.log(probs).astype(np.float32), boxes]


def test_nms_suppresses_an_overlapping_box_of_the_same_class_only() -> None:
    (same,) = postprocess(scene((1, 0.8, OVERLAPPING), (1, 0.9, BOX), (1, 0.7, APART)))
    assert same.scores.tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_allclose(same.boxes, [BOX, APART], atol=1e-6)
    (other,) = postprocess(scene((2, 0.8, OVERLAPPING), (1, 0.9, BOX)))
    assert other.labels.tolist() == [1, 2]
    (lenient,) = postprocess(scene((1, 0.8, OVERLAPPING), (1, 0.9, BOX)), iou_threshold=0.8)
    assert len(lenient.scores) == 2  # IoU 0.78 is not above 0.8


def test_detections_have_the_contract_types_and_come_best_first() -> None:
    (found,) = postprocess(list(random_outputs(1, 400, 5, seed=1)))
    assert isinstance(found, Detections)
    assert (found.boxes.dtype, found.scores.dtype, found.labels.dtype) == (np.float32, np.float32, np.int64)
    assert found.boxes.shape == (len(found.scores), 4) and found.labels.shape == found.scores.shape
    assert np.all(np.diff(found.scores) <= 0)
    assert found.boxes.min() >= 0 and found.boxes.max() <= 1  # the random boxes stray outside: clipped
    assert set(found.labels.tolist()) <= set(range(5))


def test_thresholds_and_caps_are_respected() -> None:
    outputs = list(random_outputs(1, 600, 8, seed=2))
    (loose,) = postprocess(outputs, max_detections=1000)
    (strict,) = postprocess(outputs, score_threshold=0.5, max_detections=1000)
    assert len(strict.scores) < len(loose.scores) and strict.scores.min() > 0.5
    (capped,) = postprocess(outputs, max_detections=7)
    np.testing.assert_array_equal(capped.scores, loose.scores[:7])
    (one_each,) = postprocess(outputs, top_k=1)
    assert sorted(one_each.labels.tolist()) == list(range(8))


def test_nothing_above_the_threshold_gives_empty_detections() -> None:
    (found,) = postprocess(scene((0, 0.005, BOX), (1, 0.009, APART)))
    assert found.boxes.shape == (0, 4) and found.scores.shape == found.labels.shape == (0,)


def test_outputs_are_recognised_in_either_order() -> None:
    logits, boxes = random_outputs(2, 200, 6, seed=3)
    for found, swapped in zip(postprocess([logits, boxes]), postprocess([boxes, logits]), strict=True):
        np.testing.assert_array_equal(found.boxes, swapped.boxes)
        np.testing.assert_array_equal(found.labels, swapped.labels)
    three_classes = random_outputs(1, 50, 3, seed=4)  # logits end in 4 too: the order given is trusted
    np.testing.assert_array_equal(split_outputs(list(three_classes))[0], three_classes[0])


def test_a_classifier_is_not_a_detector() -> None:
    assert not is_detector_outputs([(1, 10)])
    assert not is_detector_outputs([(1, 100, 4), (1, 99, 6)])  # anchors differ
    assert is_detector_outputs([(2, 100, 4), (2, 100, 11)])
    with pytest.raises(targets.EdgecompError, match="not a detector's"):
        postprocess([np.zeros((1, 10), np.float32)])


class TinyDetector(nn.Module):
    """A detector-shaped net: every cell of an 8x8 feature map is an anchor with class logits and a box.
    It returns boxes first, as some runtimes order a detector's outputs."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 4, 1), nn.ReLU())
        self.logits = nn.Conv2d(16, classes + 1, 1)
        self.boxes = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        logits = self.logits(features).flatten(2).transpose(1, 2)
        centre_size = torch.sigmoid(self.boxes(features)).flatten(2).transpose(1, 2)
        centre, size = centre_size[..., :2], centre_size[..., 2:] / 2
        return torch.cat([centre - size, centre + size], dim=-1), logits


@pytest.fixture(scope="module")
def detector_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("detector") / "tiny-detector.onnx"
    return targets.get_target("onnx").export(TinyDetector().eval(), torch.zeros(1, 3, 32, 32), "fp32", out, None, {})


def test_bench_times_a_detectors_postprocessing_apart(detector_onnx: Path) -> None:
    runner = targets.load_runner(detector_onnx, threads=1)
    assert [out.shape for out in runner.predict(np.zeros((1, 3, 32, 32), np.float32))] == [(1, 64, 4), (1, 64, 6)]
    result = benchmark(runner, warmup=1, runs=5)
    assert result.postprocess_ms_p50 is not None and result.postprocess_ms_p90 is not None
    assert 0 < result.postprocess_ms_p50 <= result.postprocess_ms_p90
    decoded = json.loads(result.to_json())
    assert decoded["postprocess_ms_p50"] == result.postprocess_ms_p50 and decoded["runs"] == 5
    assert "post-process p50" in format_table(result)
    skipped = benchmark(runner, warmup=0, runs=2, postprocess="none")
    assert skipped.postprocess_ms_p50 is None and "postprocess_ms_p50" not in skipped.as_dict()


def test_bench_leaves_a_classifier_as_it_was(exported: Callable[[str, str], Path]) -> None:
    runner = targets.load_runner(exported("onnx", "fp32"), threads=1)
    result = benchmark(runner, warmup=0, runs=2)
    assert result.postprocess_ms_p50 is None and result.postprocess_ms_p90 is None
    assert not {"postprocess_ms_p50", "postprocess_ms_p90"} & set(json.loads(result.to_json()))
    assert "post-process" not in format_table(result)
    with pytest.raises(targets.EdgecompError, match="not a detector's"):
        benchmark(runner, warmup=0, runs=1, postprocess="detection")
    with pytest.raises(targets.EdgecompError, match="expected one of auto, detection, none"):
        benchmark(runner, postprocess="nms")


def test_bench_cli_on_a_detector_without_torch(detector_onnx: Path) -> None:
    # A None entry in sys.modules makes `import torch` fail, as on a device with only numpy and a runtime.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from targets.bench import main\n"
        f"sys.exit(main([{str(detector_onnx)!r}, '--json', '--threads', '1', '--runs', '3', '--warmup', '0', "
        "'--min-time', '0']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert decoded["postprocess_ms_p50"] > 0 and decoded["runs"] == 3


def test_a_files_metadata_says_whether_its_outputs_are_a_detectors() -> None:
    """edgecomp writes what a file's outputs are ("outputs" in its metadata); shapes decide only for files made
    elsewhere, so two outputs shaped like a detector's are not post-processed when the file says otherwise."""
    from targets.detect import is_detector_file

    shapes = [(1, 100, 4), (1, 100, 11)]
    assert is_detector_file({"outputs": "logits,boxes"}, shapes)
    assert not is_detector_file({"outputs": "embeddings,keypoints"}, shapes)
    assert is_detector_file({}, shapes)
    assert not is_detector_file({"outputs": "logits,boxes"}, [(1, 10)])
